"""The statistics the paper lacked: bootstrap intervals, permutation tests, ROC AUC, intra-rater
agreement and reading times - each checked against brute force, scipy or scikit-learn."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.stats import fisher_exact
from sklearn.metrics import roc_auc_score
from statsmodels.stats.multitest import multipletests

from evaluator.multiple_testing import adjusted_p
from evaluator.ratings.reader_metrics import imrmc_frame, intra_rater_agreement, reading_times, roc_auc_table
from evaluator.ratings.report import RatingSettings, compute_ratings
from evaluator.ratings.scores import expert_scores, fleiss_kappa
from evaluator.ratings.stats import (
    Stratum,
    _weighted_binary_kappa,
    bootstrap_kappas,
    bootstrap_replicates,
    bootstrap_scores,
    discrimination_tests,
    percentile_interval,
    permutation_test,
)
from evaluator.ratings.votes import VotesError, validate_votes, vote_matrix
from histosynth.tables import ALL_CLASSES

COLUMNS = ["rater", "item", "class", "source", "vote", "confidence", "repeat", "seconds", "position"]


def random_study(
    raters: tuple[str, ...] = ("A", "B", "C"),
    classes: tuple[str, ...] = ("ADI", "TUM"),
    sources: tuple[str, ...] = ("real", "G1", "G2"),
    per_cell: int = 5,
    seed: int = 0,
) -> pd.DataFrame:
    """Every rater rates every tile; real tiles are called real more often; confidence 1..6."""
    rng = np.random.default_rng(seed)
    rows = []
    for rater in raters:
        position = 0
        for klass in classes:
            for source in sources:
                for index in range(per_cell):
                    position += 1
                    real = rng.random() < (0.7 if source == "real" else 0.45)
                    vote = "real" if real else "synthetic"
                    seconds = float(rng.exponential(4.0))
                    item = f"{klass}-{source}-{index}"
                    rows.append(
                        (rater, item, klass, source, vote, int(rng.integers(1, 7)), 0, seconds, position)
                    )
    return pd.DataFrame(rows, columns=COLUMNS)


def test_replicates_resample_within_cells_and_raters() -> None:
    matrix = vote_matrix(validate_votes(random_study(per_cell=4)))
    chunks = list(bootstrap_replicates(matrix, 120, seed=1, chunk=50))
    assert [len(chunk.tiles) for chunk in chunks] == [50, 50, 20]
    tiles = np.concatenate([chunk.tiles for chunk in chunks])
    cells = pd.factorize(pd.MultiIndex.from_arrays([matrix.item_class, matrix.item_source]))[0]
    for code in np.unique(cells):
        assert (tiles[:, cells == code].sum(axis=1) == 4).all()
    assert (np.concatenate([chunk.raters for chunk in chunks]).sum(axis=1) == 3).all()
    again = np.concatenate([chunk.tiles for chunk in bootstrap_replicates(matrix, 120, seed=1, chunk=50)])
    np.testing.assert_array_equal(tiles, again)


def expand(votes: pd.DataFrame, matrix, tile_counts: np.ndarray, rater_counts: np.ndarray) -> pd.DataFrame:
    """Brute force: the resampled study written out, each drawn rater and tile as its own copy."""
    tile_weight = dict(zip(matrix.items, tile_counts, strict=True))
    rater_weight = dict(zip(matrix.raters, rater_counts, strict=True))
    rows = []
    for row in votes.itertuples(index=False):
        for rater_copy in range(int(rater_weight[row.rater])):
            for tile_copy in range(int(tile_weight[row.item])):
                rows.append(
                    (f"{row.rater}#{rater_copy}", f"{row.item}#{tile_copy}", row[2], row.source, row.vote)
                )
    return pd.DataFrame(rows, columns=COLUMNS[:5])


def test_bootstrap_scores_match_brute_force_resampling() -> None:
    votes = validate_votes(random_study(per_cell=3, seed=4))
    matrix = vote_matrix(votes)
    n = 40
    brute = []
    for chunk in bootstrap_replicates(matrix, n, seed=9):
        for tiles, raters in zip(chunk.tiles, chunk.raters, strict=True):
            brute.append(expert_scores(vote_matrix(validate_votes(expand(votes, matrix, tiles, raters)))))
    intervals = bootstrap_scores(matrix, n_bootstrap=n, ci_level=0.9, seed=9).set_index(["class", "source"])
    for key, interval in intervals.iterrows():
        samples = [table.set_index(["class", "source"]).loc[key, "score_mean"] for table in brute]
        assert interval["ci_low"] == pytest.approx(np.nanpercentile(samples, 5))
        assert interval["ci_high"] == pytest.approx(np.nanpercentile(samples, 95))
    assert len(intervals) == 2 * 3  # generators x (ADI, TUM, ALL)


def test_weighted_kappa_equals_kappa_of_the_repeated_table() -> None:
    rng = np.random.default_rng(6)
    real = rng.integers(0, 5, size=12)
    table = np.column_stack([real, 4 - real])
    weights = rng.multinomial(12, np.full(12, 1 / 12), size=5).astype(float)
    for row, kappa in zip(weights, _weighted_binary_kappa(table, weights), strict=True):
        expected = fleiss_kappa(np.repeat(table, row.astype(int), axis=0))
        assert kappa == pytest.approx(expected.kappa) if np.isfinite(expected.kappa) else np.isnan(kappa)


def test_kappa_intervals_cover_the_estimate() -> None:
    matrix = vote_matrix(validate_votes(random_study(per_cell=8, seed=3)))
    intervals = bootstrap_kappas(matrix, n_bootstrap=300, seed=2)
    assert set(intervals["class"]) == {"ADI", "TUM", "ALL", "MEAN"}
    assert (intervals["ci_low"] <= intervals["ci_high"]).all()


def test_kappa_intervals_use_the_same_raters_as_the_estimate() -> None:
    # D rated 3 of 30 tiles; kappa counts A, B and C only, so its bootstrap must too: the
    # intervals equal those without D (one chunk of replicates: the same tile draws).
    votes = random_study(raters=("A", "B", "C"), classes=("ADI",), sources=("real", "G1"), per_cell=15)
    straggler = votes[votes["rater"] == "A"].head(3).assign(rater="D")
    with_d = vote_matrix(validate_votes(pd.concat([votes, straggler])))
    without_d = vote_matrix(validate_votes(votes))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        intervals = bootstrap_kappas(with_d, n_bootstrap=200, seed=5)
    expected = bootstrap_kappas(without_d, n_bootstrap=200, seed=5)
    pd.testing.assert_frame_equal(intervals, expected)


def test_weighted_kappa_without_drawn_tiles_is_nan_without_warnings() -> None:
    table = np.array([[2, 1], [0, 3], [3, 0]])
    weights = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 2.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kappas = _weighted_binary_kappa(table, weights)
    assert np.isnan(kappas[0]) and np.isnan(kappas[2])  # nothing drawn; one category only
    assert kappas[1] == pytest.approx(fleiss_kappa(table).kappa)


def test_percentile_interval_of_nothing_is_empty() -> None:
    for samples, size in ((np.array([]), 0), (np.empty((0, 5)), 0), (np.empty((2, 0)), 2)):
        low, high = percentile_interval(samples, 0.95)
        assert low.shape == high.shape == (size,) and np.isnan(low).all() and np.isnan(high).all()


def test_permutation_test_is_fisher_for_one_rater() -> None:
    # 10 generated tiles, 2 called real; 10 real tiles, 8 called real.
    stratum = Stratum(n_generated=10, n_real=10, called_real=10, generated_called_real=2, weight=1.0)
    score, p, method = permutation_test([stratum])
    assert score == pytest.approx(2 / 10 - 8 / 10) and method == "exact"
    assert p == pytest.approx(fisher_exact([[2, 8], [8, 2]]).pvalue)
    # Unequal cells, one-sided: 6 generated (1 called real), 9 real (7 called real).
    stratum = Stratum(n_generated=6, n_real=9, called_real=8, generated_called_real=1, weight=1.0)
    _, p_less, _ = permutation_test([stratum], alternative="less")
    assert p_less == pytest.approx(fisher_exact([[1, 5], [7, 2]], alternative="less").pvalue)
    with pytest.raises(VotesError, match="alternative must be one of"):
        permutation_test([stratum], alternative="both")


def test_permutation_test_matches_enumerating_every_relabelling() -> None:
    # Two raters, 4 generated + 3 real tiles each; all 35 x 35 relabellings are equally likely.
    votes = {"A": [1, 0, 0, 1, 1, 1, 0], "B": [0, 0, 1, 0, 1, 1, 1]}  # first 4 generated, last 3 real

    def statistic(labels: dict[str, tuple[int, ...]]) -> float:
        scores = []
        for rater, calls in votes.items():
            generated = [calls[i] for i in labels[rater]]
            real = [calls[i] for i in range(7) if i not in labels[rater]]
            scores.append(np.mean(generated) - np.mean(real))
        return float(np.mean(scores))

    observed = statistic({"A": (0, 1, 2, 3), "B": (0, 1, 2, 3)})
    subsets = list(itertools.combinations(range(7), 4))
    null = [statistic({"A": a, "B": b}) for a in subsets for b in subsets]
    expected = np.mean(np.abs(null) >= abs(observed) - 1e-12)
    strata = [Stratum(4, 3, sum(c), sum(c[:4]), 0.5) for c in votes.values()]
    score, p, _ = permutation_test(strata)
    assert score == pytest.approx(observed)
    assert p == pytest.approx(expected)


def test_normal_approximation_is_close_to_the_exact_test_for_many_raters() -> None:
    rng = np.random.default_rng(8)
    strata = []
    for _ in range(12):
        real_calls = int(rng.integers(4, 9))
        generated_calls = int(rng.integers(2, 8))
        strata.append(Stratum(10, 10, real_calls + generated_calls, generated_calls, 1 / 12))
    _, exact, method = permutation_test(strata, exact_budget=10**9)
    _, normal, approximate = permutation_test(strata, exact_budget=0)
    assert (method, approximate) == ("exact", "normal")
    assert normal == pytest.approx(exact, abs=0.02)


def test_discrimination_tests_correct_each_family_with_holm() -> None:
    matrix = vote_matrix(validate_votes(random_study(per_cell=10, seed=1)))
    tests = discrimination_tests(matrix)
    assert set(tests["correction"]) == {"holm"} and set(tests["method"]) == {"exact"}
    for is_all in (False, True):
        family = tests[(tests["class"] == ALL_CLASSES) == is_all]
        order = np.argsort(family["p"].to_numpy())
        p = family["p"].to_numpy()[order]
        holm = np.minimum(1, np.maximum.accumulate(p * np.arange(len(p), 0, -1)))
        np.testing.assert_allclose(family["p_adjusted"].to_numpy()[order], holm)
    scores = expert_scores(matrix).set_index(["class", "source"])["score_mean"]
    for row in tests.itertuples(index=False):
        assert row.score == pytest.approx(scores[(row[0], row.source)])
    with pytest.raises(VotesError, match="unknown multiple-testing correction 'tukey'"):
        discrimination_tests(matrix, correction="tukey")


def test_adjusted_p_matches_statsmodels() -> None:
    p = np.random.default_rng(0).uniform(0, 0.2, size=17)
    for method in ("holm", "fdr_bh", "bonferroni"):
        np.testing.assert_allclose(adjusted_p(p, method), multipletests(p, method=method)[1])


def test_roc_auc_per_rater_matches_scikit_learn() -> None:
    votes = validate_votes(random_study(per_cell=12, seed=2))
    matrix = vote_matrix(votes)
    table = roc_auc_table(matrix, n_bootstrap=200, seed=0)
    signed = np.where(votes["vote"] == "real", 1, -1) * votes["confidence"]
    votes = votes.assign(score=signed)
    for source in ("G1", "G2"):
        for rater in ("A", "B", "C"):
            mine = votes[(votes["rater"] == rater) & votes["source"].isin(["real", source])]
            expected = roc_auc_score(mine["source"] == "real", mine["score"])
            row = table[(table["source"] == source) & (table["rater"] == rater)].iloc[0]
            assert row["auc"] == pytest.approx(expected)
            assert row["ci_low"] <= row["auc"] <= row["ci_high"]
        mean = table[(table["source"] == source) & (table["rater"] == "MEAN")].iloc[0]
        per_rater = table[(table["source"] == source) & (table["rater"] != "MEAN")]["auc"]
        assert mean["auc"] == pytest.approx(per_rater.mean())
        assert mean["auc_std"] == pytest.approx(per_rater.std(ddof=1))
        assert mean["n_raters"] == 3 and mean["n_tiles"] == 24 and mean["n_real_tiles"] == 24


def test_imrmc_export_has_truth_and_one_modality_per_generator() -> None:
    matrix = vote_matrix(validate_votes(random_study(per_cell=2)))
    frame = imrmc_frame(matrix)
    truth = frame[frame["readerID"] == "truth"]
    assert len(truth) == len(matrix.items) and set(truth["modalityID"]) == {"truth"}
    assert set(truth["score"]) == {0.0, 1.0}
    reads = frame[frame["readerID"] != "truth"]
    assert set(reads["modalityID"]) == {"G1", "G2"}
    assert len(reads) == 2 * 3 * (4 + 4)  # generators x raters x (real + that generator's tiles)
    no_confidence = validate_votes(random_study(per_cell=2).assign(confidence=np.nan))
    assert imrmc_frame(vote_matrix(no_confidence)).empty
    assert roc_auc_table(vote_matrix(no_confidence)).empty


def test_intra_rater_kappa_by_hand_and_repeats_left_out_elsewhere() -> None:
    votes = random_study(raters=("A",), per_cell=2, seed=5).drop(columns=["confidence"])
    items = votes.iloc[:4].copy()
    # First votes of the four repeated tiles: real, real, synthetic, synthetic.
    votes.loc[:3, "vote"] = ["real", "real", "synthetic", "synthetic"]
    repeats = items.assign(repeat=1, vote=["real", "synthetic", "synthetic", "synthetic"], position=99)
    with_repeats = pd.concat([votes, repeats], ignore_index=True)
    agreement = intra_rater_agreement(validate_votes(with_repeats)).set_index("rater")
    # p_o = 3/4; first real 2/4, repeat real 1/4: p_e = 2/4 * 1/4 + 2/4 * 3/4 = 1/2; kappa = 1/2.
    assert agreement.loc["A", "n_pairs"] == 4
    assert agreement.loc["A", "agreement"] == pytest.approx(0.75)
    assert agreement.loc["A", "kappa"] == pytest.approx(0.5)
    plain = compute_ratings(votes, RatingSettings(n_bootstrap=20))
    repeated = compute_ratings(with_repeats, RatingSettings(n_bootstrap=20))
    pd.testing.assert_frame_equal(plain.expert_scores, repeated.expert_scores)
    pd.testing.assert_frame_equal(plain.fleiss_kappa, repeated.fleiss_kappa)
    assert plain.intra_rater.empty


def test_intra_rater_kappa_undefined_when_every_answer_is_the_same() -> None:
    votes = random_study(raters=("A",), per_cell=1).assign(vote="real")
    repeats = votes.iloc[:2].assign(repeat=1)
    table = intra_rater_agreement(validate_votes(pd.concat([votes, repeats], ignore_index=True)))
    assert np.isnan(table["kappa"].iloc[0]) and "kappa undefined" in table["note"].iloc[0]
    assert table["agreement"].iloc[0] == 1.0


def test_reading_time_trend_over_position() -> None:
    votes = random_study(raters=("A", "B"), per_cell=4)
    votes["seconds"] = 10.0 - 0.05 * votes["position"]
    per_rater, per_source = reading_times(validate_votes(votes))
    per_rater = per_rater.set_index("rater")
    assert per_rater.loc["A", "slope_per_100"] == pytest.approx(-5.0)
    assert per_rater.loc["A", "spearman_rho"] == pytest.approx(-1.0)
    assert per_rater.loc["ALL", "n"] == len(votes)
    assert set(per_source["source"]) == {"real", "G1", "G2", "ALL"}
    # Without a position column, each rater's row order gives the same positions.
    by_order, _ = reading_times(validate_votes(votes.drop(columns=["position"])))
    assert by_order.set_index("rater").loc["B", "slope_per_100"] == pytest.approx(-5.0)
    assert reading_times(validate_votes(votes.drop(columns=["seconds"])))[0].empty


def test_unfinished_raters_are_left_out_unless_asked() -> None:
    votes = random_study(raters=("A", "B", "C"), per_cell=3)
    votes = votes[~((votes["rater"] == "C") & (votes["position"] > 5))]
    report = compute_ratings(votes, RatingSettings(n_bootstrap=20))
    raters = report.raters.set_index("rater")
    assert not raters.loc["C", "finished"] and not raters.loc["C", "included"]
    assert raters.loc["C", "n_items"] == 5 and raters.loc["C", "n_items_total"] == 18
    assert report.expert_scores["n_raters"].max() == 2
    included = compute_ratings(votes, RatingSettings(n_bootstrap=20, include_unfinished=True))
    assert included.raters["included"].all()
    adi = included.expert_scores.set_index(["class", "source"]).loc[("ADI", "G1")]
    assert adi["n_raters"] == 3  # C finished the ADI block: positions 1..5 cover real and G1
    only_c = votes[votes["rater"] == "C"]
    partial = pd.concat([only_c, votes[(votes["rater"] == "A") & (votes["position"] > 3)]])
    with pytest.raises(VotesError, match="no rater rated all 18 tiles; include unfinished raters"):
        compute_ratings(partial)
