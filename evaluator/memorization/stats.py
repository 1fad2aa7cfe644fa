"""Statistics of the memorization audit: the paper's table and a verdict that sees the tail.

The paper calls a generator memorization-free when the mean best correlation of its
tiles lies within one standard deviation of the held-out baseline's. A handful of copied
tiles among 200 barely moves a mean, so the verdict here looks at the tail as well:

* threshold: an order statistic of the baseline's best correlations (its maximum, or a
  high percentile such as `p99.9`): how close real, unseen tissue gets to the training set
  by chance. A generated tile above it is flagged for a person to inspect.
* count test: if generated tiles were as novel as held-out tiles (exchangeable with
  them), a tile would exceed the j-th largest of m baseline values with probability
  j / (m + 1). `binom_p` is the one-sided binomial tail of the count at that rate, as if
  the threshold were fixed; `exact_p` is the exact tail under exchangeability, which also
  accounts for the threshold being estimated from m values: the exceedance probability is
  then Beta(j, m - j + 1) distributed, so the count is beta-binomial.
* shift test: a one-sided Mann-Whitney U test that generated tiles' correlations are
  stochastically larger than the baseline's (a generator close to its training set overall).

The `ALL` row of a source sums the counts over classes (each class with its own
threshold) and takes the exact distribution of that sum by convolving the per-class ones;
its U test pools the values of all classes.

At the paper's scale one audit runs 9 classes x 2 generators = 18 count tests; read one by
one at alpha = 0.05, the chance that some cell of a copy-free audit crosses alpha approaches
1 - 0.95^18 = 60%.
The verdict therefore reads Holm-adjusted p-values (`exact_p_adjusted`, `mwu_p_adjusted`),
which keep the family-wise error at alpha: the class x source rows form one family and the
`ALL` rows (one per source) another, each test adjusted within its own family.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from scipy import stats

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
    "binom_p",
    "exact_p",
    "exact_p_adjusted",
    "mwu_u",
    "mwu_p",
    "mwu_p_adjusted",
    "correction",
    "verdict",
]
_TESTED_COLUMNS = VERDICT_COLUMNS[:8] + ["mwu_u", "mwu_p"]  # what `_row` computes, before `_judge`
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


def verdict_table(
    tiles: pd.DataFrame,
    classes: list[str],
    sources: list[str],
    baseline: str,
    rule: str = "max",
    alpha: float = 0.05,
) -> tuple[pd.DataFrame, pd.Series]:
    """Per class and source: threshold, count above it, count and shift tests, and a verdict.

    Args:
        tiles: one row per audited tile with columns `class`, `source` and `r`.
        classes: the classes, in order; each needs baseline tiles.
        sources: the generated sources to judge (not the baseline).
        baseline: the source name of the held-out real tiles.
        rule: the threshold rule (see `baseline_threshold`).
        alpha: significance level of the verdict, applied to Holm-adjusted p-values (see
            the module docstring for the two families).

    Returns:
        The table (`VERDICT_COLUMNS`, with an `ALL` row per source) and a boolean Series
        aligned with `tiles` that flags the tiles above their class's threshold.

    Raises:
        HistosynthError: a class has no baseline tiles.
    """
    thresholds: dict[str, tuple[float, int, np.ndarray]] = {}
    for name in classes:
        values = tiles.loc[(tiles["class"] == name) & (tiles["source"] == baseline), "r"].to_numpy()
        if len(values) == 0:
            raise HistosynthError(f"baseline {baseline!r} has no tiles of class {name}")
        threshold, rank = baseline_threshold(values, rule)
        thresholds[name] = (threshold, rank, values)
    class_threshold = tiles["class"].map({name: value[0] for name, value in thresholds.items()})
    flagged = (tiles["source"] != baseline) & (tiles["r"] > class_threshold)
    rows = []
    for source in sources:
        binomials, exacts, generated, references = [np.ones(1)], [np.ones(1)], [], []
        for name in classes:
            threshold, rank, reference = thresholds[name]
            values = tiles.loc[(tiles["class"] == name) & (tiles["source"] == source), "r"].to_numpy()
            if len(values) == 0:
                continue
            binomial, exact = exceedance_pmfs(len(values), rank, len(reference))
            binomials.append(np.convolve(binomials[-1], binomial))
            exacts.append(np.convolve(exacts[-1], exact))
            generated.append(values)
            references.append(reference)
            rows.append(_row(name, source, threshold, values, reference, binomial, exact))
        if generated:
            rows.append(
                _row(
                    ALL_CLASSES,
                    source,
                    np.nan,
                    np.concatenate(generated),
                    np.concatenate(references),
                    binomials[-1],
                    exacts[-1],
                    n_above=int(flagged[tiles["source"] == source].sum()),
                )
            )
    table = pd.DataFrame(rows, columns=_TESTED_COLUMNS)
    return _judge(table, alpha), flagged


def _judge(table: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Add the Holm-adjusted p-values, each row's family, and the verdict they give."""
    overall = (table["class"] == ALL_CLASSES).to_numpy()
    for column in ("exact_p", "mwu_p"):
        adjusted = np.empty(len(table))
        for members in (~overall, overall):
            if members.any():
                adjusted[members] = adjusted_p(table.loc[members, column].to_numpy(float), CORRECTION)
        table[f"{column}_adjusted"] = adjusted
    cells, sources = int(np.count_nonzero(~overall)), int(np.count_nonzero(overall))
    table["correction"] = np.where(
        overall,
        f"{CORRECTION} over {sources} {ALL_CLASSES} rows",
        f"{CORRECTION} over {cells} class x source cells",
    )
    table["verdict"] = np.select(
        [table["exact_p_adjusted"] < alpha, table["mwu_p_adjusted"] < alpha],
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
