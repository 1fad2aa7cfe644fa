"""Per-reader statistics the paper did not record: ROC AUC, intra-rater agreement, reading time.

With a confidence rating, each vote becomes a score (+confidence for "real", -confidence for
"synthetic"; higher means "more real") and each rater an ROC curve separating real tiles from
one generator's tiles: AUC 0.5 means the generator fools that rater completely. Across raters,
the MRMC-style summary is the mean AUC with a two-way (raters and tiles) bootstrap interval, and
the reads are exported in iMRMC's data-frame format for a full Obuchowski-Rockette / U-statistic
analysis with the FDA's iMRMC tool.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse, stats
from sklearn.metrics import cohen_kappa_score

from evaluator.ratings.stats import (
    bootstrap_replicates,
    check_bootstrap_settings,
    percentile_interval,
    weighted_rater_mean,
)
from evaluator.ratings.votes import VoteMatrix, first_presentations, with_positions
from histosynth.votes import REAL_SOURCE, VOTE_VALUES

MEAN_RATER = "MEAN"
ALL_RATERS = "ALL"
ALL_SOURCES = "ALL"


def roc_auc_table(
    matrix: VoteMatrix, n_bootstrap: int = 1000, ci_level: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """Each rater's ROC AUC for real vs each generator's tiles (all classes), and the mean.

    The AUC counts ties as one half (the Mann-Whitney form, as scikit-learn's roc_auc_score).
    A rater's interval resamples tiles only; the `MEAN` row's interval resamples raters and
    tiles (same replicates as the score intervals for the same seed).

    Args:
        matrix: first-presentation votes with `signed_confidence`.

    Returns:
        source, rater (name or `MEAN`), auc, auc_std (std across raters, `MEAN` rows only),
        ci_low, ci_high, n_real_tiles, n_tiles, n_raters. Empty when there are no confidence
        ratings.
    """
    columns = [
        "source",
        "rater",
        "auc",
        "auc_std",
        "ci_low",
        "ci_high",
        "n_real_tiles",
        "n_tiles",
        "n_raters",
    ]
    check_bootstrap_settings(n_bootstrap, ci_level)
    if matrix.signed_confidence is None:
        return pd.DataFrame(columns=columns)
    levels = np.unique(matrix.signed_confidence[np.isfinite(matrix.signed_confidence)])
    n_raters = len(matrix.raters)
    real = np.flatnonzero(matrix.item_source == REAL_SOURCE)
    real_levels = _level_indicators(matrix, real, levels)
    generated = {source: np.flatnonzero(matrix.item_source == source) for source in matrix.generators}
    generated_levels = {source: _level_indicators(matrix, generated[source], levels) for source in generated}
    per_rater = {source: [] for source in generated}
    mean = {source: [] for source in generated}
    for replicate in bootstrap_replicates(matrix, n_bootstrap, seed):
        real_hist = _weighted_hist(real_levels, replicate.tiles[:, real], n_raters)
        for source, index in generated.items():
            aucs = _auc(
                real_hist, _weighted_hist(generated_levels[source], replicate.tiles[:, index], n_raters)
            )
            per_rater[source].append(aucs)
            mean[source].append(weighted_rater_mean(aucs.T, replicate.raters))
    rows = []
    n_real = np.isfinite(matrix.signed_confidence[:, real]).sum(axis=1)
    for source, index in generated.items():
        point = _auc(
            _weighted_hist(real_levels, np.ones((1, real.size)), n_raters),
            _weighted_hist(generated_levels[source], np.ones((1, index.size)), n_raters),
        )[0]
        low, high = percentile_interval(np.concatenate(per_rater[source]).T, ci_level)
        n_generated = np.isfinite(matrix.signed_confidence[:, index]).sum(axis=1)
        for rater in range(n_raters):
            rows.append(
                [source, matrix.raters[rater], point[rater], np.nan, low[rater], high[rater]]
                + [n_real[rater], n_generated[rater], 1]
            )
        finite = point[np.isfinite(point)]
        mean_low, mean_high = percentile_interval(np.concatenate(mean[source])[None, :], ci_level)
        spread = float(finite.std(ddof=1)) if finite.size > 1 else np.nan
        center = float(finite.mean()) if finite.size else np.nan
        rows.append(
            [
                source,
                MEAN_RATER,
                center,
                spread,
                mean_low[0],
                mean_high[0],
                real.size,
                index.size,
                finite.size,
            ]
        )
    return pd.DataFrame(rows, columns=columns)


def _level_indicators(matrix: VoteMatrix, items: np.ndarray, levels: np.ndarray) -> sparse.csr_matrix:
    """Sparse (items x raters*levels) indicator of which level each rater gave each item."""
    scores = matrix.signed_confidence[:, items]
    raters, columns = np.nonzero(np.isfinite(scores))
    codes = raters * len(levels) + np.searchsorted(levels, scores[raters, columns])
    return sparse.csr_matrix(
        (np.ones(codes.size, dtype=np.float32), (columns, codes)),
        shape=(items.size, len(matrix.raters) * len(levels)),
    )


def _weighted_hist(indicators: sparse.csr_matrix, weights: np.ndarray, n_raters: int) -> np.ndarray:
    """(replicates x raters x levels) weighted level counts."""
    counts = np.asarray((indicators.T @ weights.T).T, dtype=float)  # exact in float32, widened for products
    return counts.reshape(weights.shape[0], n_raters, -1)


def _auc(real: np.ndarray, generated: np.ndarray) -> np.ndarray:
    """AUC from level histograms (replicates x raters x levels): P(real > generated) + ties / 2."""
    below = np.cumsum(generated, axis=-1) - generated
    wins = (real * (below + 0.5 * generated)).sum(axis=-1)
    pairs = real.sum(axis=-1) * generated.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, wins / pairs, np.nan)


def imrmc_frame(matrix: VoteMatrix) -> pd.DataFrame:
    """The reads in iMRMC's data-frame format (readerID, caseID, modalityID, score).

    Each generator is a modality whose cases are the real tiles (truth 1, signal present)
    and that generator's tiles (truth 0); the score is the signed confidence. Truth rows
    have readerID and modalityID `truth`, as iMRMC's `doIMRMC` expects.

    Returns:
        The frame, empty when there are no confidence ratings.
    """
    columns = ["readerID", "caseID", "modalityID", "score"]
    if matrix.signed_confidence is None:
        return pd.DataFrame(columns=columns)
    items = np.array(matrix.items, dtype=object)
    truth = pd.DataFrame(
        {
            "readerID": "truth",
            "caseID": items,
            "modalityID": "truth",
            "score": (matrix.item_source == REAL_SOURCE).astype(float),
        }
    )
    parts = [truth]
    for source in matrix.generators:
        columns_in = np.flatnonzero((matrix.item_source == source) | (matrix.item_source == REAL_SOURCE))
        scores = matrix.signed_confidence[:, columns_in]
        raters, cols = np.nonzero(np.isfinite(scores))
        parts.append(
            pd.DataFrame(
                {
                    "readerID": np.array(matrix.raters, dtype=object)[raters],
                    "caseID": items[columns_in[cols]],
                    "modalityID": source,
                    "score": scores[raters, cols],
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def intra_rater_agreement(votes: pd.DataFrame) -> pd.DataFrame:
    """Cohen's kappa between each rater's first and repeated vote on the same tiles.

    Args:
        votes: checked votes including `repeat` = 1 rows.

    Returns:
        rater (and `ALL`, all pairs pooled), n_pairs, agreement (fraction of equal votes),
        kappa, note (why kappa is undefined: both presentations used one answer only).
        Empty when nothing was repeated.
    """
    columns = ["rater", "n_pairs", "agreement", "kappa", "note"]
    repeats = votes[votes["repeat"] == 1][["rater", "item", "vote"]]
    if repeats.empty:
        return pd.DataFrame(columns=columns)
    firsts = votes[votes["repeat"] == 0][["rater", "item", "vote"]]
    pairs = repeats.merge(firsts, on=["rater", "item"], suffixes=("_repeat", "_first"))
    groups = [(rater, group) for rater, group in pairs.groupby("rater", sort=True)]
    groups.append((ALL_RATERS, pairs))
    rows = []
    for rater, group in groups:
        first, again = group["vote_first"].to_numpy(), group["vote_repeat"].to_numpy()
        agreement = float((first == again).mean())
        used = set(first) | set(again)
        if len(set(first)) == 1 and len(set(again)) == 1 and len(used) == 1:
            kappa, note = np.nan, f"every answer was {first[0]!r}: chance agreement is 1, kappa undefined"
        else:
            kappa, note = float(cohen_kappa_score(first, again, labels=list(VOTE_VALUES))), ""
        rows.append([rater, len(group), agreement, kappa, note])
    return pd.DataFrame(rows, columns=columns)


def reading_times(votes: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reading time per tile, per rater and per source, and its trend over the rating session.

    The trend is the least-squares slope of seconds on position (seconds per 100 tiles) and
    Spearman's rho with its p-value - a negative rho means the rater sped up (learning or
    fatigue). Positions come from the table's `position` column or else each rater's row
    order; repeats take a place in the sequence but are not themselves timed here.

    Returns:
        (per_rater, per_source): per_rater has rater (and `ALL`, pooled), n, mean_seconds,
        median_seconds, slope_per_100, spearman_rho, spearman_p; per_source has source (and
        `ALL`), n, mean_seconds, median_seconds. Both empty when no vote has `seconds`.
    """
    timed = first_presentations(with_positions(votes))
    timed = timed[timed["seconds"].notna()]
    rater_columns = [
        "rater",
        "n",
        "mean_seconds",
        "median_seconds",
        "slope_per_100",
        "spearman_rho",
        "spearman_p",
    ]
    source_columns = ["source", "n", "mean_seconds", "median_seconds"]
    if timed.empty:
        return pd.DataFrame(columns=rater_columns), pd.DataFrame(columns=source_columns)
    rows = [_trend_row(rater, group) for rater, group in timed.groupby("rater", sort=True)]
    rows.append(_trend_row(ALL_RATERS, timed))
    per_source = timed.groupby("source", sort=True)["seconds"].agg(["size", "mean", "median"]).reset_index()
    per_source.columns = source_columns
    overall = [ALL_SOURCES, len(timed), timed["seconds"].mean(), timed["seconds"].median()]
    per_source.loc[len(per_source)] = overall
    return pd.DataFrame(rows, columns=rater_columns), per_source


def _trend_row(rater: str, group: pd.DataFrame) -> list:
    seconds = group["seconds"].to_numpy(dtype=float)
    position = group["position"].to_numpy(dtype=float)
    slope = rho = p = np.nan
    if np.unique(position).size > 1:
        slope = 100.0 * stats.linregress(position, seconds).slope
        if np.unique(seconds).size > 1:
            result = stats.spearmanr(position, seconds)
            rho, p = float(result.statistic), float(result.pvalue)
    return [rater, len(group), float(seconds.mean()), float(np.median(seconds)), slope, rho, p]
