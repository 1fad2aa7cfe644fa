"""What the paper lacked: bootstrap confidence intervals and significance tests for the ratings.

Three raters and ten tiles per cell give wide error bars, so every expert rating score gets a
two-way bootstrap interval (raters resampled with replacement, and tiles resampled within
each class and source) and every class x generator a test of "raters tell its tiles from real
ones": a permutation test of the expert score that shuffles the real/generated labels within
each rater (and class), which keeps each rater's tendency to answer "real" fixed. Its null
distribution is a sum of independent hypergeometric terms, computed exactly by convolution
when small and by its normal approximation otherwise; for one rater it is Fisher's exact test.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from evaluator.multiple_testing import CORRECTIONS, adjusted_p
from evaluator.ratings.scores import MEAN_CLASSES, subject_table
from evaluator.ratings.votes import VoteMatrix, VotesError
from histosynth.tables import ALL_CLASSES
from histosynth.votes import REAL_SOURCE

ALTERNATIVES = ("two-sided", "less", "greater")
_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Replicates:
    """One chunk of bootstrap worlds: how often each tile and each rater was drawn.

    Attributes:
        tiles: (replicates x items) counts as float32 (exact for counts, and products of
            0/1 votes with them stay exact while halving the cost); items are resampled
            within their class and source.
        raters: (replicates x raters) counts.
    """

    tiles: np.ndarray
    raters: np.ndarray


def bootstrap_replicates(
    matrix: VoteMatrix, n_bootstrap: int, seed: int, chunk: int = 250
) -> Iterator[Replicates]:
    """Draw bootstrap worlds in chunks; the same seed gives the same worlds to every statistic.

    Args:
        matrix: first-presentation votes.
        n_bootstrap: number of replicates in all.
        seed: seed of numpy's default generator.
        chunk: replicates per chunk (bounds memory at chunk x items floats).
    """
    rng = np.random.default_rng(seed)
    cells = pd.MultiIndex.from_arrays([matrix.item_class, matrix.item_source])
    codes = pd.factorize(cells)[0]
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    # Sorted by cell, position j may be replaced by any position of its own cell.
    start_of, size_of = starts[codes[order]], sizes[codes[order]]
    n_items, n_raters = len(codes), len(matrix.raters)
    done = 0
    while done < n_bootstrap:
        size = min(chunk, n_bootstrap - done)
        offsets = np.arange(size)[:, None]
        drawn = order[start_of + (rng.random((size, n_items)) * size_of).astype(np.int64)]
        tiles = np.bincount((offsets * n_items + drawn).ravel(), minlength=size * n_items)
        drawn_raters = rng.integers(0, n_raters, size=(size, n_raters))
        raters = np.bincount((offsets * n_raters + drawn_raters).ravel(), minlength=size * n_raters)
        yield Replicates(
            tiles.reshape(size, n_items).astype(np.float32), raters.reshape(size, n_raters).astype(float)
        )
        done += size


def weighted_rater_mean(values: np.ndarray, rater_weights: np.ndarray) -> np.ndarray:
    """Mean over raters (rows of `values`, raters x replicates) weighted by draw counts, NaN-aware."""
    weights = rater_weights.T * np.isfinite(values)
    total = weights.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, np.nansum(values * weights, axis=0) / total, np.nan)


def percentile_interval(samples: np.ndarray, ci_level: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval per row of `samples` (cells x replicates), ignoring NaN replicates.

    Bounds are rounded to 12 decimals so that a difference of equal fractions reads 0, not
    a floating-point residue such as 1.4e-17. No cells (an empty array of any shape) give
    empty bounds and no replicates give NaN bounds, rather than numpy's axis error.
    """
    tail = 100.0 * (1.0 - ci_level) / 2.0
    samples = np.asarray(samples, dtype=float)
    if samples.size == 0:
        return np.full(len(samples), np.nan), np.full(len(samples), np.nan)
    finite = np.isfinite(samples).any(axis=1)
    low = np.full(samples.shape[0], np.nan)
    high = np.full(samples.shape[0], np.nan)
    if finite.any():
        low[finite] = np.nanpercentile(samples[finite], tail, axis=1)
        high[finite] = np.nanpercentile(samples[finite], 100.0 - tail, axis=1)
    return np.round(low, 12), np.round(high, 12)


def bootstrap_scores(
    matrix: VoteMatrix, n_bootstrap: int = 1000, ci_level: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """Two-way bootstrap percentile intervals of the expert rating scores.

    Each replicate draws raters with replacement and, independently, tiles with replacement
    within each class and source, recomputes every rater's fractions and scores, and averages
    the drawn raters (an `ALL` score first averages each rater's classes, as in
    `evaluator.ratings.expert_scores`).

    Returns:
        class, source, ci_low, ci_high for every class x generator and each generator's `ALL`.
    """
    check_bootstrap_settings(n_bootstrap, ci_level)
    classes, generators = matrix.classes, matrix.generators
    rated = np.isfinite(matrix.called_real)
    called = np.nan_to_num(matrix.called_real).astype(np.float32)
    # Per cell: its items, the votes called real, and which were rated (None: all of them).
    cells = {}
    for klass in classes:
        for source in [*generators, REAL_SOURCE]:
            index = np.flatnonzero((matrix.item_class == klass) & (matrix.item_source == source))
            if index.size:
                block = rated[:, index]
                cells[(klass, source)] = (
                    index,
                    called[:, index],
                    None if block.all() else block.astype(np.float32),
                )
    keys = [(klass, source) for source in generators for klass in [*classes, ALL_CLASSES]]
    samples = {key: [] for key in keys}
    for replicate in bootstrap_replicates(matrix, n_bootstrap, seed):
        fractions = {}
        for key, (index, called_block, rated_block) in cells.items():
            weights = replicate.tiles[:, index].T
            numerator = (called_block @ weights).astype(float)
            denominator = weights.sum(axis=0)[None, :] if rated_block is None else rated_block @ weights
            with np.errstate(invalid="ignore", divide="ignore"):
                fractions[key] = numerator / denominator
        for source in generators:
            per_class = []
            for klass in classes:
                if (klass, source) not in fractions or (klass, REAL_SOURCE) not in fractions:
                    continue
                score = fractions[(klass, source)] - fractions[(klass, REAL_SOURCE)]
                per_class.append(score)
                samples[(klass, source)].append(weighted_rater_mean(score, replicate.raters))
            if per_class:
                overall = _nanmean_stack(per_class)
                samples[(ALL_CLASSES, source)].append(weighted_rater_mean(overall, replicate.raters))
    keys = [key for key in keys if samples[key]]
    low, high = percentile_interval(np.array([np.concatenate(samples[key]) for key in keys]), ci_level)
    return pd.DataFrame(
        {"class": [k for k, _ in keys], "source": [s for _, s in keys], "ci_low": low, "ci_high": high}
    )


def bootstrap_kappas(
    matrix: VoteMatrix, n_bootstrap: int = 1000, ci_level: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """Percentile intervals of Fleiss' kappa by resampling tiles (subjects).

    Raters are not resampled: drawing a rater twice would count a rater agreeing with
    themself and inflate agreement. Each cell resamples the tiles and raters of its
    `subject_table`, the table its point estimate in `kappa_tables` comes from. Replicates
    whose tiles all fall in one category have no kappa and are left out of the percentiles.

    Returns:
        source, class, ci_low, ci_high for each class, `ALL` (pooled) and `MEAN` (averaged).
    """
    check_bootstrap_settings(n_bootstrap, ci_level)
    keys, tables = [], []
    for source in [*matrix.generators, REAL_SOURCE]:
        for klass in [*matrix.classes, ALL_CLASSES]:
            mask = (matrix.item_source == source) & ((matrix.item_class == klass) | (klass == ALL_CLASSES))
            if not mask.any():
                continue
            keys.append((source, klass))
            tables.append(subject_table(matrix, mask))
    samples = [[] for _ in keys]
    for replicate in bootstrap_replicates(matrix, n_bootstrap, seed):
        for position, design in enumerate(tables):
            samples[position].append(_weighted_binary_kappa(design.counts, replicate.tiles[:, design.items]))
    draws = {key: np.concatenate(chunks) for key, chunks in zip(keys, samples, strict=True)}
    rows = list(draws)
    for source in [*matrix.generators, REAL_SOURCE]:
        per_class = [draws[(source, klass)] for klass in matrix.classes if (source, klass) in draws]
        if per_class:
            draws[(source, MEAN_CLASSES)] = _nanmean_stack(per_class, axis=0)
            rows.append((source, MEAN_CLASSES))
    low, high = percentile_interval(np.array([draws[key] for key in rows]), ci_level)
    return pd.DataFrame(
        {"source": [s for s, _ in rows], "class": [k for _, k in rows], "ci_low": low, "ci_high": high}
    )


def _weighted_binary_kappa(table: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Fleiss' kappa of a (subjects x 2) table for each row of subject weights (replicates).

    A replicate that drew none of the table's tiles (total weight 0) or whose ratings all
    fall in one category has no kappa: NaN, without numpy's division warnings.
    """
    n = table[0].sum() if len(table) else 0
    if n < 2:
        return np.full(weights.shape[0], np.nan)
    real = table[:, 0]
    agreement = (real * (real - 1) + (n - real) * (n - real - 1)) / (n * (n - 1))
    total = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = weights @ real / (n * total)
        chance = p**2 + (1 - p) ** 2
        observed = weights @ agreement / total
        return np.where(chance < 1 - _TOLERANCE, (observed - chance) / (1 - chance), np.nan)


def _nanmean_stack(arrays: list[np.ndarray], axis: int = 0) -> np.ndarray:
    """Mean over a list of equally shaped arrays, ignoring NaN, NaN where all are NaN."""
    stacked = np.stack(arrays, axis=axis)
    count = np.isfinite(stacked).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.nansum(stacked, axis=axis) / count, np.nan)


def check_bootstrap_settings(n_bootstrap: int, ci_level: float) -> None:
    """Refuse a bootstrap that cannot give an interval.

    Raises:
        VotesError: fewer than 1 replicate, or a confidence level outside (0, 1).
    """
    if n_bootstrap < 1:
        raise VotesError(f"bootstrap replicates must be >= 1, got {n_bootstrap}")
    if not 0.0 < ci_level < 1.0:
        raise VotesError(f"confidence level must lie between 0 and 1, got {ci_level}")


@dataclass(frozen=True)
class Stratum:
    """One rater (and class) of a stratified permutation test.

    The statistic's contribution is weight * (a / n_generated - (t - a) / n_real), where `a`
    is the number of generated tiles called real and t the tiles called real in the stratum.
    """

    n_generated: int
    n_real: int
    called_real: int
    generated_called_real: int
    weight: float


def permutation_test(
    strata: list[Stratum], alternative: str = "two-sided", exact_budget: int = 200_000
) -> tuple[float, float, str]:
    """Test the weighted expert score against shuffling real/generated labels within strata.

    Under H0 (raters cannot tell the generator's tiles from real ones) the generated tiles of
    a stratum are a random draw from its tiles, so `a` is hypergeometric given the stratum's
    number of "real" answers, and strata are independent. The null distribution of the
    weighted sum is convolved exactly while that takes at most `exact_budget` operations;
    beyond that (many raters or many tiles, where the central limit theorem holds) the sum's
    exact null mean (0) and variance give a normal approximation.

    Args:
        strata: the rater (x class) strata with both generated and real tiles rated.
        alternative: "two-sided" (|T| at least as large), "less" (generated called real less
            often than real: raters spot it), or "greater".
        exact_budget: the most value x support products the convolution may take.

    Returns:
        (observed statistic, p-value, method) with method "exact" or "normal".
    """
    if alternative not in ALTERNATIVES:
        raise VotesError(f"alternative must be one of {', '.join(ALTERNATIVES)}, got {alternative!r}")
    if not strata:
        return np.nan, np.nan, "none"
    observed = float(sum(_contribution(s, s.generated_called_real) for s in strata))
    values, probabilities = np.zeros(1), np.ones(1)
    work = 0
    for stratum in strata:
        support = np.arange(
            max(0, stratum.called_real - stratum.n_real), min(stratum.called_real, stratum.n_generated) + 1
        )
        work += values.size * support.size
        if work > exact_budget:
            return observed, _normal_p(strata, observed, alternative), "normal"
        pmf = stats.hypergeom.pmf(
            support, stratum.n_generated + stratum.n_real, stratum.called_real, stratum.n_generated
        )
        values = (values[:, None] + _contribution(stratum, support)[None, :]).ravel()
        probabilities = (probabilities[:, None] * pmf[None, :]).ravel()
        values, inverse = np.unique(np.round(values, 10), return_inverse=True)
        probabilities = np.bincount(inverse.ravel(), weights=probabilities)
    return observed, float(min(1.0, probabilities[_extreme(values, observed, alternative)].sum())), "exact"


def _contribution(stratum: Stratum, generated_called_real: np.ndarray | int) -> np.ndarray:
    other = stratum.called_real - np.asarray(generated_called_real)
    return stratum.weight * (np.asarray(generated_called_real) / stratum.n_generated - other / stratum.n_real)


def _extreme(values: np.ndarray, observed: float, alternative: str) -> np.ndarray:
    if alternative == "less":
        return values <= observed + _TOLERANCE
    if alternative == "greater":
        return values >= observed - _TOLERANCE
    return np.abs(values) >= abs(observed) - _TOLERANCE


def _normal_p(strata: list[Stratum], observed: float, alternative: str) -> float:
    """p-value of the normal approximation; each term has null mean 0 and a hypergeometric variance."""
    variance = 0.0
    for s in strata:
        total = s.n_generated + s.n_real
        var_a = (
            s.called_real
            * s.n_generated
            * s.n_real
            * (total - s.called_real)
            / (total**2 * max(total - 1, 1))
        )
        variance += (s.weight * (1 / s.n_generated + 1 / s.n_real)) ** 2 * var_a
    if variance <= 0:
        return 1.0
    z = observed / np.sqrt(variance)
    if alternative == "less":
        return float(stats.norm.cdf(z))
    if alternative == "greater":
        return float(stats.norm.sf(z))
    return float(2 * stats.norm.sf(abs(z)))


def discrimination_tests(
    matrix: VoteMatrix,
    correction: str = "holm",
    alpha: float = 0.05,
    alternative: str = "two-sided",
) -> pd.DataFrame:
    """Per class and generator (and per generator over all classes): can raters tell its tiles?

    The statistic is the expert rating score itself; strata are raters (and, for `ALL`,
    rater x class, weighted as in the `ALL` score). p-values are corrected for multiple
    testing (`adjusted_p`: Holm, or any method of statsmodels' `multipletests`), separately
    for the family of class x generator tests and for the family of per-generator `ALL` tests.

    Returns:
        class, source, score, p, p_adjusted, significant, method, correction, alternative.
    """
    if correction not in CORRECTIONS:
        raise VotesError(
            f"unknown multiple-testing correction {correction!r}; use one of {', '.join(CORRECTIONS)}"
        )
    counts = _cell_counts(matrix)
    rows = []
    for source in matrix.generators:
        overall: dict[int, list[tuple[int, int, int, int]]] = {}
        for klass in matrix.classes:
            if (klass, source) not in counts:
                continue
            n_real, real_called = counts.get((klass, REAL_SOURCE), (np.zeros(0, int), np.zeros(0, int)))
            n_generated, generated_called = counts[(klass, source)]
            cells = []
            for rater in np.flatnonzero(n_generated > 0):
                if rater < n_real.size and n_real[rater] > 0:
                    a, b = int(generated_called[rater]), int(real_called[rater])
                    cells.append((int(n_generated[rater]), int(n_real[rater]), a + b, a))
                    overall.setdefault(int(rater), []).append(cells[-1])
            strata = [Stratum(*c[:3], c[3], 1.0 / len(cells)) for c in cells]
            rows.append(_test_row(klass, source, strata, alternative))
        strata = [
            Stratum(*c[:3], c[3], 1.0 / (len(overall) * len(cells)))
            for cells in overall.values()
            for c in cells
        ]
        rows.append(_test_row(ALL_CLASSES, source, strata, alternative))
    table = pd.DataFrame(rows)
    table["p_adjusted"] = np.nan
    for is_all in (False, True):
        family = (table["class"] == ALL_CLASSES) == is_all
        finite = family & table["p"].notna()
        if finite.any():
            table.loc[finite, "p_adjusted"] = adjusted_p(table.loc[finite, "p"].to_numpy(), correction, alpha)
    table["significant"] = table["p_adjusted"] < alpha
    table["correction"] = correction
    table["alternative"] = alternative
    return table[
        ["class", "source", "score", "p", "p_adjusted", "significant", "method", "correction", "alternative"]
    ]


def _cell_counts(matrix: VoteMatrix) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """Per (class, source): each rater's number of tiles rated and of tiles called real."""
    cells = pd.MultiIndex.from_arrays([matrix.item_class, matrix.item_source])
    codes, uniques = pd.factorize(cells)
    one_hot = np.zeros((codes.size, len(uniques)))
    one_hot[np.arange(codes.size), codes] = 1.0
    rated = np.rint(np.isfinite(matrix.called_real) @ one_hot).astype(int)
    called = np.rint(np.nan_to_num(matrix.called_real) @ one_hot).astype(int)
    return {key: (rated[:, index], called[:, index]) for index, key in enumerate(uniques)}


def _test_row(klass: str, source: str, strata: list[Stratum], alternative: str) -> dict:
    score, p, method = permutation_test(strata, alternative=alternative)
    return {"class": klass, "source": source, "score": score, "p": p, "method": method}
