"""The paper's rating statistics: expert rating scores and Fleiss' kappa.

Expert rating score (Niehues et al. 2024): for rater i, class k and generator m,
`fraction of m's tiles of class k called real - fraction of real tiles of class k called real`;
0 means the generator's tiles are called real as often as real tiles. Fractions, not counts,
so cells of unequal size compare fairly. Mean and standard deviation are taken across raters.

Fleiss' kappa follows Fleiss (1971) for the estimate and Fleiss, Nee & Landis (1979) for the
standard error under H0 (no agreement beyond chance) - the formulas of R's irr::kappam.fleiss.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from evaluator.ratings.votes import VoteMatrix, VotesError
from histosynth.tables import ALL_CLASSES
from histosynth.votes import REAL_SOURCE, VOTE_VALUES

log = logging.getLogger(__name__)

MEAN_CLASSES = "MEAN"


@dataclass(frozen=True)
class FleissKappa:
    """Fleiss' kappa of one subjects x categories table, with its test against chance.

    Attributes:
        kappa: agreement beyond chance, (P_bar - P_e) / (1 - P_e).
        se: standard error under H0 (Fleiss, Nee & Landis 1979).
        z: kappa / se.
        p: two-sided p-value of z under the standard normal.
        n_subjects: rows of the table.
        n_raters: ratings per subject.
        per_category: one row per category: category, proportion, kappa, se, z, p, note.
        note: empty, or why kappa is undefined (NaN) for this table.
    """

    kappa: float
    se: float
    z: float
    p: float
    n_subjects: int
    n_raters: int
    per_category: pd.DataFrame = field(repr=False)
    note: str = ""


def fleiss_kappa(table: np.ndarray | pd.DataFrame) -> FleissKappa:
    """Fleiss' kappa for a subjects x categories table of rating counts.

    Args:
        table: counts, one row per subject and one column per category (any number >= 1);
            every row must sum to the same number of raters (>= 2). Column labels of a
            DataFrame name the categories, otherwise they are numbered 0, 1, ...

    Returns:
        The estimate, its standard error under H0, z, two-sided p and per-category kappas.
        When every rating falls in one category, chance agreement is 1 and kappa is 0/0:
        the result then carries NaN values and a `note` saying so (and a warning is logged),
        rather than a number that is not there.

    Raises:
        VotesError: the table is not 2-D, is empty, holds negative or non-integer counts,
            has rows with different numbers of ratings, or fewer than 2 ratings per subject.
    """
    labels = list(table.columns) if isinstance(table, pd.DataFrame) else None
    counts = np.asarray(table, dtype=float)
    if counts.ndim != 2 or counts.shape[0] == 0 or counts.shape[1] == 0:
        raise VotesError(
            f"Fleiss' kappa needs a non-empty subjects x categories table, got shape {counts.shape}"
        )
    if np.any(~np.isfinite(counts)) or np.any(counts < 0) or np.any(counts != np.round(counts)):
        raise VotesError("Fleiss' kappa needs non-negative integer counts")
    if labels is None:
        labels = list(range(counts.shape[1]))
    per_subject = counts.sum(axis=1)
    if np.any(per_subject != per_subject[0]):
        raise VotesError(
            "Fleiss' kappa needs the same number of ratings for every subject; rows have "
            f"{int(per_subject.min())} to {int(per_subject.max())}"
        )
    n_subjects, n = counts.shape[0], int(per_subject[0])
    if n < 2:
        raise VotesError(f"Fleiss' kappa needs at least 2 ratings per subject, got {n}")

    p_j = counts.sum(axis=0) / (n_subjects * n)
    q_j = 1.0 - p_j
    pq = p_j * q_j
    agreement = ((counts * (counts - 1)).sum(axis=1) / (n * (n - 1))).mean()
    chance = float((p_j**2).sum())
    scale = n_subjects * n * (n - 1)
    per_category = _per_category(counts, labels, p_j, pq, n, scale)
    if pq.sum() <= 0:
        category = labels[int(np.argmax(p_j))]
        note = f"all ratings fall in category {category!r}: chance agreement is 1, kappa undefined"
        log.warning("Fleiss' kappa: %s", note)
        return FleissKappa(np.nan, np.nan, np.nan, np.nan, n_subjects, n, per_category, note)
    kappa = (agreement - chance) / (1.0 - chance)
    variance = 2.0 / (pq.sum() ** 2 * scale) * (pq.sum() ** 2 - (pq * (q_j - p_j)).sum())
    se = float(np.sqrt(variance))
    z = kappa / se
    return FleissKappa(float(kappa), se, float(z), _two_sided_p(z), n_subjects, n, per_category)


def _per_category(
    counts: np.ndarray, labels: list, p_j: np.ndarray, pq: np.ndarray, n: int, scale: int
) -> pd.DataFrame:
    """Category-wise kappas (Fleiss 1971, eq. 10) with the H0 standard error sqrt(2 / (N n (n-1)))."""
    disagreement = (counts * (n - counts)).sum(axis=0)
    defined = pq > 0
    kappa = np.full(len(labels), np.nan)
    kappa[defined] = 1.0 - disagreement[defined] / (scale * pq[defined])
    se = np.sqrt(2.0 / scale)
    z = kappa / se
    note = np.where(defined, "", "category used by all ratings or by none: kappa undefined")
    return pd.DataFrame(
        {
            "category": labels,
            "proportion": p_j,
            "kappa": kappa,
            "se": se,
            "z": z,
            "p": [_two_sided_p(value) for value in z],
            "note": note,
        }
    )


def _two_sided_p(z: float) -> float:
    return float(2.0 * stats.norm.sf(abs(z))) if np.isfinite(z) else np.nan


def rater_scores(matrix: VoteMatrix) -> pd.DataFrame:
    """Each rater's fraction of tiles called real per class and source, and their score.

    Args:
        matrix: first-presentation votes.

    Returns:
        One row per rater, class and generator: rater, class, source, n_tiles,
        called_real (fraction of the generator's tiles called real), n_real_tiles,
        real_called_real (fraction of real tiles called real) and score (their difference;
        NaN when the rater rated none of the generator's or none of the real tiles).
    """
    fractions = called_real_fractions(matrix)
    real = fractions[fractions["source"] == REAL_SOURCE][["rater", "class", "n_tiles", "called_real"]]
    real = real.rename(columns={"n_tiles": "n_real_tiles", "called_real": "real_called_real"})
    generated = fractions[fractions["source"] != REAL_SOURCE]
    scores = generated.merge(real, on=["rater", "class"], how="left")
    scores["n_real_tiles"] = scores["n_real_tiles"].fillna(0).astype(int)
    scores["score"] = scores["called_real"] - scores["real_called_real"]
    return scores.sort_values(["class", "source", "rater"], kind="stable").reset_index(drop=True)


def called_real_fractions(matrix: VoteMatrix) -> pd.DataFrame:
    """Per rater, class and source (real included): tiles rated and the fraction called real."""
    cells = pd.MultiIndex.from_arrays([matrix.item_class, matrix.item_source])
    codes, uniques = pd.factorize(cells)
    one_hot = np.zeros((len(codes), len(uniques)))
    one_hot[np.arange(len(codes)), codes] = 1.0
    rated = np.isfinite(matrix.called_real)
    n_tiles = rated.astype(float) @ one_hot
    n_real = np.nan_to_num(matrix.called_real) @ one_hot
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = np.where(n_tiles > 0, n_real / n_tiles, np.nan)
    frame = pd.DataFrame(
        {
            "rater": np.repeat(matrix.raters, len(uniques)),
            "class": np.tile(uniques.get_level_values(0).to_numpy(), len(matrix.raters)),
            "source": np.tile(uniques.get_level_values(1).to_numpy(), len(matrix.raters)),
            "n_tiles": n_tiles.astype(int).ravel(),
            "called_real": fraction.ravel(),
        }
    )
    return frame[frame["n_tiles"] > 0].reset_index(drop=True)


def expert_scores(matrix: VoteMatrix, ddof: int = 1) -> pd.DataFrame:
    """The paper's expert rating score per class and generator, and per generator over classes.

    The `ALL` row of a generator averages each rater's per-class scores (every class weighs
    the same, as in the paper's equal cells) before taking mean and std across raters.

    Args:
        matrix: first-presentation votes.
        ddof: delta degrees of freedom of the std across raters (1: sample std, NaN for one
            rater; 0: population std).

    Returns:
        class, source, score_mean, score_std, n_raters, n_tiles (tiles of the generator in the
        cell) and n_real_tiles; classes sorted with `ALL` last within each generator.
    """
    per_rater = rater_scores(matrix)
    overall = per_rater.groupby(["rater", "source"], as_index=False)["score"].mean()
    overall["class"] = ALL_CLASSES
    rows = []
    for (klass, source), group in _cells(per_rater, overall):
        values = group["score"].dropna().to_numpy()
        rows.append(
            {
                "class": klass,
                "source": source,
                "score_mean": float(values.mean()) if values.size else np.nan,
                "score_std": float(values.std(ddof=ddof)) if values.size > ddof else np.nan,
                "n_raters": int(values.size),
            }
        )
    table = pd.DataFrame(rows)
    tiles = _tile_counts(matrix)
    return table.merge(tiles, on=["class", "source"], how="left")


def _cells(per_rater: pd.DataFrame, overall: pd.DataFrame) -> Iterator[tuple[tuple[str, str], pd.DataFrame]]:
    """Yield ((class, source), group): each generator's per-class scores, then its ALL group."""
    combined = pd.concat([per_rater[["rater", "class", "source", "score"]], overall], ignore_index=True)
    combined["order"] = (combined["class"] == ALL_CLASSES).astype(int)
    ordered = combined.sort_values(["source", "order", "class"], kind="stable")
    for (source, _, klass), group in ordered.groupby(["source", "order", "class"], sort=False):
        yield (klass, source), group


def _tile_counts(matrix: VoteMatrix) -> pd.DataFrame:
    """Tiles per class and source, and the real tiles of the class, for the score tables."""
    items = pd.DataFrame({"class": matrix.item_class, "source": matrix.item_source})
    counts = items.value_counts().rename("n_tiles").reset_index()
    real = counts[counts["source"] == REAL_SOURCE][["class", "n_tiles"]].rename(
        columns={"n_tiles": "n_real_tiles"}
    )
    generated = counts[counts["source"] != REAL_SOURCE]
    totals = generated.groupby("source", as_index=False)["n_tiles"].sum()
    totals["class"] = ALL_CLASSES
    totals["n_real_tiles"] = int(real["n_real_tiles"].sum())
    return pd.concat([generated.merge(real, on="class", how="left"), totals], ignore_index=True)


@dataclass(frozen=True)
class SubjectTable:
    """The complete design that Fleiss' kappa of some tiles is computed on.

    Attributes:
        counts: subjects x (real, synthetic) counts, columns in `VOTE_VALUES` order.
        items: the matrix columns of the kept tiles (the rows of `counts`, in order).
        left_out: names of raters who rated some of the tiles but are not counted.
    """

    counts: np.ndarray
    items: np.ndarray
    left_out: list[str]


def subject_table(matrix: VoteMatrix, mask: np.ndarray) -> SubjectTable:
    """The subjects x (real, synthetic) count table of the masked items, for Fleiss' kappa.

    Fleiss' kappa needs the same number of ratings per subject. With unfinished raters
    included that is not given, and keeping only the tiles rated most often would let one
    rater who rated 3 tiles shrink the table to those 3. Instead a common set of raters is
    chosen and kappa uses their votes on the tiles they all rated, choosing the set that
    keeps the most ratings (raters x tiles; ties: more tiles). Searching every set is
    exponential, so the candidates are the k raters who rated most of the masked tiles, for
    each k; when some raters rated every tile, their set is among the candidates. At least
    two raters are chosen whenever two rated a tile in common.
    """
    columns = np.flatnonzero(mask)
    rated = np.isfinite(matrix.called_real[:, columns])
    per_rater = rated.sum(axis=1)
    order = np.lexsort((np.arange(per_rater.size), -per_rater))
    order = order[per_rater[order] > 0]  # not empty: every tile of the matrix has a vote
    common = np.logical_and.accumulate(rated[order], axis=0)
    n_items = common.sum(axis=1)
    size = np.arange(1, order.size + 1)
    # Lexicographic: a real agreement table (>= 2 raters on >= 1 tile), most ratings, most tiles.
    best = max(
        range(order.size), key=lambda k: (size[k] >= 2 and n_items[k] > 0, size[k] * n_items[k], n_items[k])
    )
    raters, kept = order[: best + 1], common[best]
    called_real = np.nansum(matrix.called_real[np.ix_(raters, columns[kept])], axis=0)
    counts = np.column_stack([called_real, raters.size - called_real])
    left_out = [matrix.raters[index] for index in order[best + 1 :]]
    return SubjectTable(counts, columns[kept], left_out)


def kappa_tables(matrix: VoteMatrix) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fleiss' kappa per source (each generator and `real`) and class, pooled and averaged.

    For each source the subjects are its tiles, the categories `real`/`synthetic`. Class
    `ALL` pools all of the source's tiles into one table; class `MEAN` averages the
    per-class kappas (the paper's "average") with se = sqrt(sum se_k^2) / K, the H0 standard
    error of a mean of independent estimates, and z and p from it.

    Returns:
        (kappas, per_category): kappas has source, class, kappa, se, z, p, n_tiles,
        n_raters, n_dropped (tiles left out, see `subject_table`), raters_left_out (raters
        who rated some of the tiles but are not counted, comma-separated), note;
        per_category has source, class, category, proportion, kappa, se, z, p, note.
    """
    rows, categories = [], []
    sources = [*matrix.generators, REAL_SOURCE]
    for source in sources:
        in_source = matrix.item_source == source
        per_class = []
        for klass in [*matrix.classes, ALL_CLASSES]:
            mask = in_source & ((matrix.item_class == klass) | (klass == ALL_CLASSES))
            if not mask.any():
                continue
            row, detail = _kappa_row(matrix, mask, source, klass)
            rows.append(row)
            categories.append(detail)
            if klass != ALL_CLASSES:
                per_class.append(row)
        rows.append(_mean_row(per_class, source))
    per_category = pd.concat(categories, ignore_index=True)
    kappas = pd.DataFrame(rows)
    kappas["raters_left_out"] = kappas["raters_left_out"].map(", ".join)
    return kappas, per_category


def _kappa_row(matrix: VoteMatrix, mask: np.ndarray, source: str, klass: str) -> tuple[dict, pd.DataFrame]:
    design = subject_table(matrix, mask)
    dropped = int(mask.sum()) - design.items.size
    frame = pd.DataFrame(design.counts, columns=list(VOTE_VALUES))
    notes = [f"{dropped} tiles not rated by every counted rater left out"] if dropped else []
    if design.left_out:
        notes.append(f"raters who rated only some tiles left out: {', '.join(design.left_out)}")
    try:
        result = fleiss_kappa(frame)
    except VotesError as error:
        empty = pd.DataFrame(columns=["category", "proportion", "kappa", "se", "z", "p", "note"])
        result = FleissKappa(np.nan, np.nan, np.nan, np.nan, len(frame), 0, empty, str(error))
    row = {
        "source": source,
        "class": klass,
        "kappa": result.kappa,
        "se": result.se,
        "z": result.z,
        "p": result.p,
        "n_tiles": result.n_subjects,
        "n_raters": result.n_raters,
        "n_dropped": dropped,
        "raters_left_out": design.left_out,
        "note": "; ".join([result.note, *notes] if result.note else notes),
    }
    detail = result.per_category.assign(source=source, **{"class": klass})
    return row, detail[["source", "class", "category", "proportion", "kappa", "se", "z", "p", "note"]]


def _mean_row(per_class: list[dict], source: str) -> dict:
    kappas = np.array([row["kappa"] for row in per_class], dtype=float)
    ses = np.array([row["se"] for row in per_class], dtype=float)
    defined = np.isfinite(kappas) & np.isfinite(ses)
    note = ""
    if not defined.all():
        note = f"{int((~defined).sum())} of {len(per_class)} classes without a defined kappa left out"
    if defined.any():
        kappa = float(kappas[defined].mean())
        se = float(np.sqrt((ses[defined] ** 2).sum()) / defined.sum())
        z = kappa / se
    else:
        kappa = se = z = np.nan
    return {
        "source": source,
        "class": MEAN_CLASSES,
        "kappa": kappa,
        "se": se,
        "z": z,
        "p": _two_sided_p(z),
        "n_tiles": int(sum(row["n_tiles"] for row in per_class)),
        "n_raters": int(max((row["n_raters"] for row in per_class), default=0)),
        "n_dropped": int(sum(row["n_dropped"] for row in per_class)),
        "raters_left_out": sorted({name for row in per_class for name in row["raters_left_out"]}),
        "note": note,
    }
