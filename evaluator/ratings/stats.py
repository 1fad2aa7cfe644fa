"""What the paper lacked: bootstrap confidence intervals and significance tests for the ratings.

Three raters and ten tiles per cell give wide error bars, so every expert rating score gets a
two-way bootstrap interval (raters resampled with replacement, and tiles resampled within
each class and source) and every class x generator a test of "raters tell its tiles from real
ones": a permutation test of the expert score whose null (H0: the generator's tiles and the
real tiles of a class are exchangeable) permutes the source labels over the tiles once, with
every rater's votes following their tile. All raters see the same tiles, and when they agree
on which tiles look real (Fleiss' kappa of 0.2 or more) their scores move together; a null
that shuffled labels for each rater on its own would treat them as independent, be too
narrow, and reject too often. The relabellings are enumerated where there are few (exact p)
and drawn at random otherwise (a stated number of draws, p = (1 + #{T* >= T}) / (1 + B)).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from evaluator.multiple_testing import CORRECTIONS, adjusted_p
from evaluator.ratings.scores import MEAN_CLASSES, subject_table
from evaluator.ratings.votes import VoteMatrix, VotesError
from histosynth.sampling import derive_seed
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


N_PERMUTATIONS = 9999
"""Monte Carlo draws of the label permutation test where exact enumeration would take more."""


@dataclass(frozen=True)
class LabelBlock:
    """One class of a discrimination test: every rater's votes on its generated and real tiles.

    Attributes:
        called: (raters x tiles) 1 where the rater called the tile real, 0 synthetic, NaN
            where the rater did not rate it.
        generated: (tiles,) True for the generator's tiles, False for the real ones.
    """

    called: np.ndarray
    generated: np.ndarray


def label_permutation_test(
    blocks: list[LabelBlock],
    alternative: str = "two-sided",
    n_permutations: int = N_PERMUTATIONS,
    seed: int = 0,
) -> tuple[float, float, str]:
    """Test the expert score by permuting the source labels over the tiles, once for all raters.

    The statistic is the expert score: per rater, the fraction of generated tiles called real
    minus the fraction of real tiles called real, averaged over the blocks (classes) the rater
    rated and then over raters. H0: the labels are exchangeable over the tiles of each block
    (raters cannot tell the generator's tiles from real ones). One relabelling of the tiles is
    shared by every rater, whose votes follow their tile, so raters who agree about which
    tiles look real (a tile effect) move together under the null as they do in the data.
    Where the number of relabellings (the product over blocks of C(tiles, generated)) is at
    most `n_permutations`, all are enumerated and p is exact; otherwise `n_permutations`
    uniform relabellings are drawn and p = (1 + #{T* at least as extreme}) / (1 + draws),
    a valid p-value for any number of draws.

    Args:
        blocks: the classes of the test; a class row has one block, an `ALL` row one per class.
        alternative: "two-sided" (|T*| >= |T|), "less" (generated called real less often than
            real: raters spot it) or "greater".
        n_permutations: the most relabellings enumerated, and the draws beyond that (>= 1).
        seed: seeds the Monte Carlo draws.

    Returns:
        (observed statistic, p-value, method): method "exact (N relabellings)" or
        "monte carlo (N draws)"; (NaN, NaN, "none") when no rater rated both sides.

    Raises:
        VotesError: an unknown alternative or fewer than 1 permutation.
    """
    if alternative not in ALTERNATIVES:
        raise VotesError(f"alternative must be one of {', '.join(ALTERNATIVES)}, got {alternative!r}")
    if n_permutations < 1:
        raise VotesError(f"permutations must be >= 1, got {n_permutations}")
    blocks = [block for block in blocks if block.generated.any() and (~block.generated).any()]
    if not blocks:
        return np.nan, np.nan, "none"
    observed = float(_label_statistic(blocks, [block.generated[None, :] for block in blocks])[0])
    if not np.isfinite(observed):
        return np.nan, np.nan, "none"
    sizes = [math.comb(block.generated.size, int(block.generated.sum())) for block in blocks]
    total = math.prod(sizes)
    exact = total <= n_permutations
    draws = total if exact else n_permutations
    rng = np.random.default_rng(seed)
    enumerated = [_all_labelings(block) for block in blocks] if exact else None
    chunk = max(1, 2**22 // sum(block.called.size for block in blocks))
    extreme = 0
    for start in range(0, draws, chunk):
        stop = min(draws, start + chunk)
        if enumerated is not None:
            picks = np.unravel_index(np.arange(start, stop), sizes)
            labels = [table[pick] for table, pick in zip(enumerated, picks, strict=True)]
        else:
            labels = [_random_labelings(block, stop - start, rng) for block in blocks]
        extreme += int(np.count_nonzero(_extreme(_label_statistic(blocks, labels), observed, alternative)))
    if exact:
        return observed, min(1.0, extreme / total), f"exact ({total} relabellings)"
    return observed, (1 + extreme) / (1 + draws), f"monte carlo ({draws} draws)"


def _label_statistic(blocks: list[LabelBlock], labels: list[np.ndarray]) -> np.ndarray:
    """The expert score under each relabelling: labels[b] is (draws x tiles) of block b."""
    per_block = []
    for block, generated in zip(blocks, labels, strict=True):
        rated = np.isfinite(block.called).T.astype(float)  # tiles x raters
        called = np.nan_to_num(block.called).T
        mask = generated.astype(float)
        generated_called, generated_rated = mask @ called, mask @ rated
        real_called = called.sum(axis=0) - generated_called
        real_rated = rated.sum(axis=0) - generated_rated
        with np.errstate(invalid="ignore", divide="ignore"):
            per_block.append(
                np.where(
                    (generated_rated > 0) & (real_rated > 0),
                    generated_called / generated_rated - real_called / real_rated,
                    np.nan,
                )
            )
    per_rater = _nanmean_stack(per_block, axis=0)  # draws x raters
    count = np.isfinite(per_rater).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.nansum(per_rater, axis=1) / count, np.nan)


def _all_labelings(block: LabelBlock) -> np.ndarray:
    """Every assignment of the block's generated labels to its tiles, as (C x tiles) booleans."""
    n, k = block.generated.size, int(block.generated.sum())
    chosen = np.array(list(itertools.combinations(range(n), k)), dtype=np.int64).reshape(-1, k)
    labels = np.zeros((len(chosen), n), dtype=bool)
    np.put_along_axis(labels, chosen, True, axis=1)
    return labels


def _random_labelings(block: LabelBlock, draws: int, rng: np.random.Generator) -> np.ndarray:
    """`draws` uniform assignments of the block's generated labels, as (draws x tiles) booleans."""
    n, k = block.generated.size, int(block.generated.sum())
    order = rng.random((draws, n)).argsort(axis=1)[:, :k]
    labels = np.zeros((draws, n), dtype=bool)
    np.put_along_axis(labels, order, True, axis=1)
    return labels


def _extreme(values: np.ndarray, observed: float, alternative: str) -> np.ndarray:
    if alternative == "less":
        return values <= observed + _TOLERANCE
    if alternative == "greater":
        return values >= observed - _TOLERANCE
    return np.abs(values) >= abs(observed) - _TOLERANCE


def discrimination_tests(
    matrix: VoteMatrix,
    correction: str = "holm",
    alpha: float = 0.05,
    alternative: str = "two-sided",
    n_permutations: int = N_PERMUTATIONS,
    seed: int = 0,
) -> pd.DataFrame:
    """Per class and generator (and per generator over all classes): can raters tell its tiles?

    Each row is a `label_permutation_test` of the expert score: H0, the generator's and the
    real tiles of a class are exchangeable (one relabelling shared by all raters, within each
    class for `ALL`). p-values are corrected for multiple testing (`adjusted_p`: Holm, or any
    method of statsmodels' `multipletests`), separately for the family of class x generator
    tests and for the family of per-generator `ALL` tests.

    Args:
        matrix: first-presentation votes.
        correction, alpha: the multiple-testing method and the level of `significant`.
        alternative: see `label_permutation_test`.
        n_permutations: relabellings enumerated at most, or drawn (see `label_permutation_test`).
        seed: seeds the draws; each row draws from its own stream (seed, class, source).

    Returns:
        class, source, score, p, p_adjusted, significant, method, correction, alternative.
    """
    if correction not in CORRECTIONS:
        raise VotesError(
            f"unknown multiple-testing correction {correction!r}; use one of {', '.join(CORRECTIONS)}"
        )
    rows = []
    for source in matrix.generators:
        blocks = []
        for klass in matrix.classes:
            in_class = matrix.item_class == klass
            generated = in_class & (matrix.item_source == source)
            if not generated.any():
                continue
            columns = np.flatnonzero(generated | (in_class & (matrix.item_source == REAL_SOURCE)))
            block = LabelBlock(matrix.called_real[:, columns], generated[columns])
            blocks.append(block)
            rows.append(_test_row(klass, source, [block], alternative, n_permutations, seed))
        rows.append(_test_row(ALL_CLASSES, source, blocks, alternative, n_permutations, seed))
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


def _test_row(
    klass: str, source: str, blocks: list[LabelBlock], alternative: str, n_permutations: int, seed: int
) -> dict:
    rng_seed = derive_seed(seed, "discrimination", klass, source)
    score, p, method = label_permutation_test(blocks, alternative, n_permutations, rng_seed)
    return {"class": klass, "source": source, "score": score, "p": p, "method": method}
