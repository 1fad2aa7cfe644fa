"""Statistics of the memorization audit: the paper's table and a verdict that sees the tail.

The paper calls a generator memorization-free when the mean best correlation of its
tiles lies within one standard deviation of the held-out baseline's. A handful of copied
tiles among 200 barely moves a mean, so the verdict here looks at the tail as well. Every
test's null is that generated tiles are as novel as held-out real ones (exchangeable with
the baseline):

* tail test (what finds a single copy): each baseline value is itself the maximum of
  thousands of correlations (one held-out tile against every training tile and transform),
  so after Fisher's z = arctanh(r) the Fisher-Tippett theorem makes the baseline a sample of
  a generalised extreme-value (GEV) law. `fit_tail` fits one per class by L-moments, with the
  shape capped at the Gumbel limit (no bounded tail: p-values err towards large), and a
  generated tile's tail p-value is the model's P(Z > z). A row's tail test asks whether the
  smallest of its n tail p-values is smaller than n uniform ones would give
  (1 - (1 - p_min)^n), and names that tile (`tail_tile`). A copy at r = 0.95 sits far out in
  the tail, so its p is many orders of magnitude below the 1 / (m + 1) the count test can
  reach with m baseline tiles. The model's check is in every class row: `tail_shape` (the
  fitted GEV shape xi before the cap; xi > 0 is heavier than Gumbel), `tail_gof_ks` (the
  Kolmogorov-Smirnov distance of the baseline to the model) and `tail_gof_p` (its p-value by
  a parametric bootstrap of the fit; H0: the baseline is a GEV sample). A small `tail_gof_p`
  says the class's tail p-values should not be trusted.
* threshold: an order statistic of the baseline's best correlations (its maximum, or a
  high percentile such as `p99.9`): how close real, unseen tissue gets to the training set
  by chance. A generated tile above it is flagged for a person to inspect.
* count test: a tile exceeds the j-th largest of m baseline values with probability
  j / (m + 1). `binom_p` is the one-sided binomial tail of the count at that rate, as if
  the threshold were fixed; `exact_p` is the exact tail under exchangeability, which also
  accounts for the threshold being estimated from m values: the exceedance probability is
  then Beta(j, m - j + 1) distributed, so the count is beta-binomial.
* shift test: a one-sided Mann-Whitney U test that generated tiles' correlations are
  stochastically larger than the baseline's (a generator close to its training set overall).

The `ALL` row of a source pools its classes: the tail test over all its tiles (each with its
class's model), the count summed over classes (each class with its own threshold, its exact
null the convolution of the per-class ones) and the U test on the pooled values.

The verdict of the audit as a whole keeps its family-wise error at alpha: every test that
can change it (tail, count and shift tests of every class row and every `ALL` row: 60 at
9 classes x 2 sources) is one Holm family (`*_adjusted`). "copies suspected" reads the
adjusted tail or count test, "closer than baseline" the adjusted shift test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import special, stats

from evaluator.multiple_testing import adjusted_p
from histosynth.errors import HistosynthError
from histosynth.tables import ALL_CLASSES

SUMMARY_COLUMNS = ["class", "source", "mean", "std", "median", "p5", "p95", "n"]
VERDICT_COLUMNS = [
    "class",
    "source",
    "threshold",
    "n_above",
    "n",
    "expected_above",
    "tail_tile",
    "tail_p",
    "tail_p_adjusted",
    "tail_shape",
    "tail_gof_ks",
    "tail_gof_p",
    "binom_p",
    "exact_p",
    "exact_p_adjusted",
    "mwu_u",
    "mwu_p",
    "mwu_p_adjusted",
    "correction",
    "verdict",
]
# what `_row`, `_tail` and `_fit` compute, before `_judge`
_TESTED_COLUMNS = [
    c for c in VERDICT_COLUMNS if not c.endswith("_adjusted") and c not in ("correction", "verdict")
]
CORRECTION = "holm"
_PERCENTILE = re.compile(r"^p(\d+(?:\.\d+)?)$")


def summarize(tiles: pd.DataFrame, classes: list[str], sources: list[str]) -> pd.DataFrame:
    """The paper's table: mean, std, median, 5th and 95th percentile and n of the best r.

    Args:
        tiles: one row per audited tile with columns `class`, `source` and `r`.
        classes, sources: the row order of the table (class-major, as in the paper).

    Returns:
        A frame with `SUMMARY_COLUMNS`; std uses ddof=1 (NaN for a single tile).
    """
    rows = []
    for name in classes:
        for source in sources:
            values = tiles.loc[(tiles["class"] == name) & (tiles["source"] == source), "r"].to_numpy()
            if len(values) == 0:
                continue
            rows.append(
                {
                    "class": name,
                    "source": source,
                    "mean": values.mean(),
                    "std": values.std(ddof=1) if len(values) > 1 else np.nan,
                    "median": np.median(values),
                    "p5": np.percentile(values, 5),
                    "p95": np.percentile(values, 95),
                    "n": len(values),
                }
            )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def check_threshold_rule(rule: str) -> str:
    """Validate a threshold rule: `max` or `pQ` with 0 < Q < 100 (e.g. `p99.9`).

    Raises:
        HistosynthError: any other spelling.
    """
    match = _PERCENTILE.match(rule)
    if rule != "max" and not (match and 0 < float(match.group(1)) < 100):
        raise HistosynthError(f"threshold {rule!r}: expected 'max' or a percentile such as 'p99.9'")
    return rule


def baseline_threshold(values: np.ndarray, rule: str) -> tuple[float, int]:
    """The flagging threshold from the baseline's best correlations, and its rank from the top.

    The threshold is always one of the baseline values (`max`, or the percentile rounded up
    to the next order statistic, numpy's "higher" method), so that the null exceedance rate
    j / (m + 1) is exact.

    Returns:
        (threshold, j) where j is the number of baseline values at or above the threshold.
    """
    check_threshold_rule(rule)
    values = np.asarray(values, dtype=np.float64)
    if rule == "max":
        threshold = float(values.max())
    else:
        threshold = float(np.percentile(values, float(rule[1:]), method="higher"))
    return threshold, int(np.count_nonzero(values >= threshold))


def exceedance_pmfs(n: int, j: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Null distributions of the number of n new tiles above the j-th largest of m baseline values.

    Returns:
        (binomial pmf with rate j / (m + 1), exact beta-binomial pmf), each over 0..n.
    """
    support = np.arange(n + 1)
    binomial = stats.binom.pmf(support, n, j / (m + 1))
    exact = stats.betabinom.pmf(support, n, j, m - j + 1)
    return binomial, exact


def upper_tail(pmf: np.ndarray, k: int) -> float:
    """P(K >= k) from a pmf over 0..len-1, clipped to [0, 1] against rounding."""
    return float(min(1.0, max(0.0, pmf[k:].sum())))


_Z_CLIP = 1 - 1e-7  # r = 1 has no Fisher z; a copy's z stops at arctanh(1 - 1e-7), about 8.4
_EULER = 0.5772156649015329
GOF_DRAWS = 199
"""Parametric bootstrap samples behind the tail model's goodness-of-fit p-value."""


def fisher_z(r: np.ndarray) -> np.ndarray:
    """Fisher's z = arctanh(r), with r clipped just inside (-1, 1) so that exact copies stay finite."""
    return np.arctanh(np.clip(np.asarray(r, dtype=np.float64), -_Z_CLIP, _Z_CLIP))


@dataclass(frozen=True)
class TailModel:
    """Generalised extreme-value models of baseline maxima (Fisher's z), one per leading index.

    F(z) = exp(-(1 - k (z - loc) / scale) ** (1 / k)), Hosking's sign (scipy's `genextreme` c):
    k < 0 is a heavy (Frechet) tail, k = 0 the Gumbel limit exp(-exp(-(z - loc) / scale)).

    Attributes:
        loc, scale, k: the parameters used (k capped at 0, see `fit_tail`).
        shape: the fitted shape xi = -k before the cap (xi > 0: heavier than Gumbel).
    """

    loc: np.ndarray
    scale: np.ndarray
    k: np.ndarray
    shape: np.ndarray

    def sf(self, z: np.ndarray) -> np.ndarray:
        """P(Z > z) under each model; z broadcasts against the parameters' shape + (values,)."""
        y = (np.asarray(z, dtype=np.float64) - self.loc[..., None]) / self.scale[..., None]
        k = self.k[..., None]
        heavy = k < 0
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            base = np.where(heavy, 1 - k * y, 1.0)
            power = np.where(heavy, np.exp(np.log(np.maximum(base, 1e-300)) / np.where(heavy, k, 1.0)), 0.0)
            gumbel = np.exp(-y)
        log_cdf = -np.where(heavy, np.where(base > 0, power, np.inf), gumbel)
        return -np.expm1(log_cdf)


def fit_tail(z: np.ndarray) -> TailModel:
    """Fit a GEV to each row of baseline z values by L-moments (Hosking, Wallis & Wood 1985).

    Each baseline value is the best correlation of a held-out tile over thousands of training
    tiles and transforms, a maximum of many near-Gaussian Fisher z's, so the Fisher-Tippett
    theorem makes their law a GEV. L-moments (probability-weighted moments) are closed-form,
    vectorise over rows and are less biased than maximum likelihood at a few hundred values.
    The shape is capped at the Gumbel limit (k <= 0): a bounded upper tail fitted from a few
    hundred values would put an endpoint just above the largest baseline value and call any
    fresh tile beyond it impossible; the cap makes the tail no lighter than Gumbel, so the
    p-values err towards large.

    Args:
        z: (..., m) baseline values, m >= 3.

    Returns:
        The fitted `TailModel`, with the leading shape of `z`.
    """
    x = np.sort(np.asarray(z, dtype=np.float64), axis=-1)
    m = x.shape[-1]
    rank = np.arange(m, dtype=np.float64)
    b0 = x.mean(axis=-1)
    b1 = (x * rank / (m - 1)).mean(axis=-1)
    b2 = (x * rank * (rank - 1) / ((m - 1) * (m - 2))).mean(axis=-1)
    l1, l2, l3 = b0, 2 * b1 - b0, 6 * b2 - 6 * b1 + b0
    l2 = np.maximum(l2, 1e-12)  # all-equal baselines: a near-degenerate model, not a division by 0
    c = 2 / (3 + l3 / l2) - np.log(2) / np.log(3)
    fitted = 7.8590 * c + 2.9554 * c**2
    k = np.minimum(fitted, 0.0)
    heavy = k < 0
    safe = np.where(heavy, k, -1.0)
    gamma = special.gamma(1 + safe)
    scale = np.where(heavy, l2 * safe / ((1 - 2.0**-safe) * gamma), l2 / np.log(2))
    loc = np.where(heavy, l1 + scale * (gamma - 1) / safe, l1 - _EULER * scale)
    return TailModel(loc=loc, scale=scale, k=k, shape=-fitted)


def tail_fit_check(z: np.ndarray, draws: int = GOF_DRAWS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Goodness of fit of `fit_tail` to each row of baseline z: Kolmogorov-Smirnov D and its p.

    H0: the baseline values are a sample of a GEV (with the shape capped as in `fit_tail`).
    Because the parameters are estimated from the same values, D is referred to a parametric
    bootstrap (Lilliefors' idea): `draws` samples of m values from the fitted model, each
    refitted, p = (1 + #{D* >= D}) / (1 + draws). A small p says the tail model, and so the
    tail test's p-values, should not be trusted for that class.

    Returns:
        (D, p), each of the leading shape of `z`.
    """
    z = np.asarray(z, dtype=np.float64)
    model = fit_tail(z)
    observed = _ks_distance(model, z)
    rng = np.random.default_rng(seed)
    uniform = rng.random((draws, *z.shape))
    samples = _quantile(model, uniform)
    replicated = _ks_distance(fit_tail(samples), samples)
    return observed, (1 + (replicated >= observed - 1e-12).sum(axis=0)) / (1 + draws)


def _quantile(model: TailModel, u: np.ndarray) -> np.ndarray:
    """Inverse CDF of each model at u (..., m), for the parametric bootstrap."""
    minus_log = -np.log(u)
    k, loc, scale = (value[..., None] for value in (model.k, model.loc, model.scale))
    safe = np.where(k < 0, k, -1.0)
    heavy = loc + scale * (1 - minus_log**safe) / safe
    return np.where(k < 0, heavy, loc - scale * np.log(minus_log))


def _ks_distance(model: TailModel, z: np.ndarray) -> np.ndarray:
    """Kolmogorov-Smirnov distance between each row of z and its model."""
    cdf = 1 - model.sf(np.sort(z, axis=-1))
    m = z.shape[-1]
    steps = np.arange(1, m + 1) / m
    return np.maximum((steps - cdf).max(axis=-1), (cdf - (steps - 1 / m)).max(axis=-1))


def min_p_of_many(smallest: np.ndarray | float, count: np.ndarray | int) -> np.ndarray:
    """P(the smallest of `count` independent uniform p-values <= `smallest`): 1 - (1 - p) ** count (Sidak)."""
    return -np.expm1(np.asarray(count) * np.log1p(-np.minimum(np.asarray(smallest, dtype=float), 1.0)))


def tail_pvalues(tiles: pd.DataFrame, classes: list[str], baseline: str) -> pd.Series:
    """Each generated tile's tail p-value: P(a held-out tile's best r exceeds its r) under its
    class's `fit_tail` model of the baseline (in Fisher's z); NaN for baseline tiles.

    Raises:
        HistosynthError: a class has fewer than 3 baseline tiles (no GEV fit).
    """
    p = pd.Series(np.nan, index=tiles.index)
    for name in classes:
        in_class = (tiles["class"] == name).to_numpy()
        reference = tiles.loc[in_class & (tiles["source"] == baseline).to_numpy(), "r"].to_numpy()
        if len(reference) < 3:
            raise HistosynthError(
                f"baseline {baseline!r} has {len(reference)} tiles of class {name}; the tail model needs 3"
            )
        generated = in_class & (tiles["source"] != baseline).to_numpy()
        p[generated] = fit_tail(fisher_z(reference)).sf(fisher_z(tiles.loc[generated, "r"].to_numpy()))
    return p


def verdict_table(
    tiles: pd.DataFrame,
    classes: list[str],
    sources: list[str],
    baseline: str,
    rule: str = "max",
    alpha: float = 0.05,
) -> tuple[pd.DataFrame, pd.Series]:
    """Per class and source: threshold, count above it, tail, count and shift tests, and a verdict.

    Args:
        tiles: one row per audited tile with columns `class`, `source`, `r` and, optionally,
            `tile` (named in `tail_tile`).
        classes: the classes, in order; each needs 3 or more baseline tiles.
        sources: the generated sources to judge (not the baseline).
        baseline: the source name of the held-out real tiles.
        rule: the threshold rule (see `baseline_threshold`).
        alpha: the verdict's family-wise error rate: Holm over every test of the table (see
            the module docstring).

    Returns:
        The table (`VERDICT_COLUMNS`, with an `ALL` row per source) and a boolean Series
        aligned with `tiles` that flags the tiles above their class's threshold.

    Raises:
        HistosynthError: a class has fewer than 3 baseline tiles.
    """
    names = tiles["tile"] if "tile" in tiles else pd.Series(tiles.index.astype(str), index=tiles.index)
    tail_p = tail_pvalues(tiles, classes, baseline)
    groups = tiles.groupby(["class", "source"], sort=False).indices
    thresholds: dict[str, tuple[float, int, np.ndarray, float, float, float]] = {}
    for position, name in enumerate(classes):
        values = tiles["r"].to_numpy()[groups[(name, baseline)]]
        threshold, rank = baseline_threshold(values, rule)
        z = fisher_z(values)
        distance, fit_p = tail_fit_check(z, seed=position)
        thresholds[name] = (threshold, rank, values, float(fit_tail(z).shape), float(distance), float(fit_p))
    class_threshold = tiles["class"].map({name: value[0] for name, value in thresholds.items()})
    flagged = (tiles["source"] != baseline) & (tiles["r"] > class_threshold)
    rows = []
    for source in sources:
        binomials, exacts = [np.ones(1)], [np.ones(1)]
        generated, references, members = [], [], []
        for name in classes:
            threshold, rank, reference, shape, distance, fit_p = thresholds[name]
            index = groups.get((name, source))
            if index is None:
                continue
            values = tiles["r"].to_numpy()[index]
            binomial, exact = exceedance_pmfs(len(values), rank, len(reference))
            binomials.append(np.convolve(binomials[-1], binomial))
            exacts.append(np.convolve(exacts[-1], exact))
            generated.append(values)
            references.append(reference)
            members.append(index)
            row = _row(name, source, threshold, values, reference, binomial, exact)
            rows.append(row | _tail(index, tail_p, names) | _fit(shape, distance, fit_p))
        if generated:
            index = np.concatenate(members)
            row = _row(
                ALL_CLASSES,
                source,
                np.nan,
                np.concatenate(generated),
                np.concatenate(references),
                binomials[-1],
                exacts[-1],
                n_above=int(flagged.to_numpy()[index].sum()),
            )
            rows.append(row | _tail(index, tail_p, names) | _fit(np.nan, np.nan, np.nan))
    table = pd.DataFrame(rows, columns=_TESTED_COLUMNS)
    return _judge(table, alpha), flagged


def _tail(index: np.ndarray, tail_p: pd.Series, names: pd.Series) -> dict[str, object]:
    """The tail test of a row: its most extreme tile and the chance that the smallest of its
    n tail p-values is that small (`min_p_of_many`)."""
    values = tail_p.to_numpy()[index]
    best = int(np.argmin(values))
    return {
        "tail_tile": str(names.iloc[index[best]]),
        "tail_p": float(min_p_of_many(values[best], len(values))),
    }


def _fit(shape: float, distance: float, fit_p: float) -> dict[str, float]:
    return {"tail_shape": shape, "tail_gof_ks": distance, "tail_gof_p": fit_p}


def _judge(table: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Holm-adjust every test of the table as one family and read the verdict from it."""
    tests = ("tail_p", "exact_p", "mwu_p")
    raw = table[list(tests)].to_numpy(float)
    adjusted = adjusted_p(raw.ravel(), CORRECTION).reshape(raw.shape)
    for position, column in enumerate(tests):
        table[f"{column}_adjusted"] = adjusted[:, position]
    table["correction"] = f"{CORRECTION} over {raw.size} tests ({len(table)} rows x {len(tests)})"
    copies = (table["tail_p_adjusted"] < alpha) | (table["exact_p_adjusted"] < alpha)
    table["verdict"] = np.select(
        [copies, table["mwu_p_adjusted"] < alpha],
        ["copies suspected", "closer than baseline"],
        "no evidence of memorization",
    )
    return table[VERDICT_COLUMNS]


def _row(
    name: str,
    source: str,
    threshold: float,
    values: np.ndarray,
    reference: np.ndarray,
    binomial: np.ndarray,
    exact: np.ndarray,
    n_above: int | None = None,
) -> dict[str, object]:
    if n_above is None:
        n_above = int(np.count_nonzero(values > threshold))
    expected = float(np.dot(np.arange(len(binomial)), binomial))
    binom_p = upper_tail(binomial, n_above)
    exact_p = upper_tail(exact, n_above)
    test = stats.mannwhitneyu(values, reference, alternative="greater")
    return {
        "class": name,
        "source": source,
        "threshold": threshold,
        "n_above": n_above,
        "n": len(values),
        "expected_above": expected,
        "binom_p": binom_p,
        "exact_p": exact_p,
        "mwu_u": float(test.statistic),
        "mwu_p": float(test.pvalue),
    }
