"""The memorization verdict's statistics: the tail model checked against scipy, and the verdict's
family-wise error and power checked by simulation at the level of the best correlations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from evaluator.memorization.stats import (
    exceedance_pmfs,
    fisher_z,
    fit_tail,
    min_p_of_many,
    tail_fit_check,
    verdict_table,
)
from evaluator.multiple_testing import adjusted_p

CLASSES = [f"C{i}" for i in range(9)]
SOURCES = ["g1", "g2"]
N = 200  # generated tiles per class and source, and baseline tiles per class: the defaults
ALPHA = 0.05


def test_l_moment_fit_recovers_gev_parameters_and_scipy_survival() -> None:
    # A heavy tail (scipy's c = Hosking's k = -0.1): the fit is close to the truth and to scipy's
    # maximum likelihood, and its survival function is scipy's genextreme.sf.
    sample = stats.genextreme.rvs(-0.1, loc=0.5, scale=0.05, size=50_000, random_state=1)
    model = fit_tail(sample)
    c, loc, scale = stats.genextreme.fit(sample[:20_000])
    assert float(model.k) == pytest.approx(-0.1, abs=0.02) and float(model.k) == pytest.approx(c, abs=0.03)
    assert float(model.loc) == pytest.approx(loc, abs=2e-3) and float(model.scale) == pytest.approx(
        scale, rel=0.03
    )
    z = np.array([0.45, 0.6, 0.9, 2.0])
    expected = stats.genextreme.sf(z, float(model.k), float(model.loc), float(model.scale))
    np.testing.assert_allclose(model.sf(z), expected, rtol=1e-9)
    # A bounded tail (c = 0.2) is capped at the Gumbel limit, whose tail is heavier: larger p.
    bounded = stats.genextreme.rvs(0.2, loc=0.5, scale=0.05, size=50_000, random_state=2)
    capped = fit_tail(bounded)
    assert float(capped.k) == 0.0 and float(capped.shape) == pytest.approx(-0.2, abs=0.02)
    gumbel = stats.gumbel_r.sf(0.9, float(capped.loc), float(capped.scale))
    assert float(capped.sf(np.array([0.9]))[0]) == pytest.approx(gumbel, rel=1e-9)
    assert gumbel > stats.genextreme.sf(0.9, 0.2, 0.5, 0.05)


def test_goodness_of_fit_is_the_ks_distance_with_a_parametric_bootstrap_p() -> None:
    # H0 of the check: the baseline is a GEV sample. D equals scipy's KS statistic against the
    # fitted model; a GEV sample passes, a two-humped sample does not.
    rng = np.random.default_rng(5)
    sample = stats.genextreme.rvs(-0.05, loc=0.4, scale=0.05, size=200, random_state=3)
    model = fit_tail(sample)
    distance, p = tail_fit_check(sample)
    reference = stats.kstest(sample, lambda x: 1 - model.sf(np.asarray(x))).statistic
    assert float(distance) == pytest.approx(reference)
    assert p > 0.05
    humps = np.concatenate([rng.normal(0.3, 0.01, 100), rng.normal(0.6, 0.01, 100)])
    assert tail_fit_check(humps)[1] < 0.01


def test_min_p_of_many_is_the_beta_law_of_the_smallest_uniform() -> None:
    # H0: n independent uniform p-values; their minimum is Beta(1, n).
    for smallest, count in [(1e-6, 200), (0.01, 1800), (0.3, 3)]:
        assert float(min_p_of_many(smallest, count)) == pytest.approx(stats.beta.cdf(smallest, 1, count))


def null_r(rng: np.random.Generator, shape: tuple[int, ...], candidates: int = 40_000) -> np.ndarray:
    """Best correlations of copy-free tiles: each the maximum of `candidates` Gaussian Fisher z's
    (exactly, by inverting Phi^candidates), with a tile-specific spread (texture), so that the
    GEV is only the asymptotic law, as with real tiles."""
    maxima = stats.norm.ppf(rng.random(shape) ** (1 / candidates))
    spread = np.exp(rng.normal(np.log(0.05), 0.15, shape))
    return np.tanh(0.1 + spread * maxima)


def simulated_verdicts(baseline: np.ndarray, generated: np.ndarray) -> dict[str, np.ndarray]:
    """The verdict's 60 tests for many audits at once, as `verdict_table` computes them.

    Args:
        baseline: (runs, classes, m) best r of held-out tiles.
        generated: (runs, sources, classes, n) best r of generated tiles.

    Returns:
        p: (runs, rows, 3) tail, count and Mann-Whitney p-values, rows ordered as the table
        (per source its classes, then ALL); copies: (runs, rows) the verdict's "copies suspected".
    """
    runs, n_sources, n_classes, n = generated.shape
    m = baseline.shape[-1]
    model = fit_tail(fisher_z(baseline))  # (runs, classes)
    tail = model.sf(fisher_z(generated.transpose(1, 0, 2, 3))).transpose(1, 0, 2, 3)
    cell_tail = min_p_of_many(tail.min(axis=-1), n)
    all_tail = min_p_of_many(tail.min(axis=(-1, -2)), n_classes * n)
    above = (generated > baseline.max(axis=-1)[:, None, :, None]).sum(axis=-1)
    cell_count = stats.betabinom.sf(above - 1, n, 1, m)
    joint = np.ones(1)
    for _ in range(n_classes):
        joint = np.convolve(joint, exceedance_pmfs(n, 1, m)[1])
    tails = np.concatenate([np.cumsum(joint[::-1])[::-1], [0.0]])
    all_count = np.minimum(1.0, tails[above.sum(axis=-1)])
    cell_mwu = stats.mannwhitneyu(generated, baseline[:, None], alternative="greater", axis=-1).pvalue
    pooled = baseline.reshape(runs, 1, -1)
    all_mwu = stats.mannwhitneyu(
        generated.reshape(runs, n_sources, -1), pooled, alternative="greater", axis=-1
    )
    rows = [
        np.concatenate([cell[:, :, :], total[:, :, None]], axis=2).reshape(runs, -1)
        for cell, total in ((cell_tail, all_tail), (cell_count, all_count), (cell_mwu, all_mwu.pvalue))
    ]
    p = np.stack(rows, axis=-1)
    adjusted = np.array([adjusted_p(run.ravel(), "holm").reshape(run.shape) for run in p])
    copies = (adjusted[..., 0] < ALPHA) | (adjusted[..., 1] < ALPHA)
    return {"p": p, "adjusted": adjusted, "copies": copies, "flagged": (adjusted < ALPHA).any(axis=(1, 2))}


def as_tiles(baseline: np.ndarray, generated: np.ndarray) -> pd.DataFrame:
    """One simulated audit as the `tiles` frame `verdict_table` reads."""
    frames = [
        pd.DataFrame({"source": "base", "class": name, "r": baseline[c]}) for c, name in enumerate(CLASSES)
    ]
    for s, source in enumerate(SOURCES):
        for c, name in enumerate(CLASSES):
            frames.append(pd.DataFrame({"source": source, "class": name, "r": generated[s, c]}))
    tiles = pd.concat(frames, ignore_index=True)
    tiles["tile"] = [f"tile{i}" for i in range(len(tiles))]
    return tiles


def test_simulated_tests_are_the_verdict_tables_tests() -> None:
    # The vectorised simulation below computes exactly what `verdict_table` does.
    rng = np.random.default_rng(1)
    baseline, generated = null_r(rng, (3, 9, N)), null_r(rng, (3, 2, 9, N))
    generated[1, 1, 4, 17] = 0.96
    simulated = simulated_verdicts(baseline, generated)
    for run in range(3):
        verdict, _ = verdict_table(as_tiles(baseline[run], generated[run]), CLASSES, SOURCES, "base")
        for position, column in enumerate(("tail_p", "exact_p", "mwu_p")):
            np.testing.assert_allclose(
                verdict[column], simulated["p"][run, :, position], rtol=1e-6, atol=1e-12
            )
            np.testing.assert_allclose(
                verdict[f"{column}_adjusted"], simulated["adjusted"][run, :, position], rtol=1e-6, atol=1e-12
            )
        np.testing.assert_array_equal(verdict["verdict"] == "copies suspected", simulated["copies"][run])
    assert set(verdict["correction"]) == {"holm over 60 tests (20 rows x 3)"}


def test_copy_free_audits_keep_the_family_wise_error_at_alpha() -> None:
    # H0: generated tiles are as novel as held-out ones (exchangeable with the baseline); 9
    # classes x 2 sources, 200 + 200 tiles. The share of audits with any verdict other than
    # "no evidence" stays within alpha + 2 Monte Carlo s.e. over 300 audits.
    rng = np.random.default_rng(2)
    runs = 300
    flagged = simulated_verdicts(null_r(rng, (runs, 9, N)), null_r(rng, (runs, 2, 9, N)))["flagged"]
    limit = ALPHA + 2 * np.sqrt(ALPHA * (1 - ALPHA) / runs)
    assert flagged.mean() <= limit, f"{flagged.mean():.3f} of copy-free audits flagged (limit {limit:.3f})"


def test_one_planted_copy_is_found_in_its_class_and_all_row() -> None:
    # One generated tile of one random class and source is a copy (r in [0.95, 0.999], as after a
    # JPEG re-encode or mild noise); its class row and its source's ALL row must say so.
    rng = np.random.default_rng(3)
    runs = 300
    baseline, generated = null_r(rng, (runs, 9, N)), null_r(rng, (runs, 2, 9, N))
    source, klass, tile = rng.integers(0, 2, runs), rng.integers(0, 9, runs), rng.integers(0, N, runs)
    generated[np.arange(runs), source, klass, tile] = rng.uniform(0.95, 0.999, runs)
    copies = simulated_verdicts(baseline, generated)["copies"]
    found = copies[np.arange(runs), source * 10 + klass] & copies[np.arange(runs), source * 10 + 9]
    assert found.mean() >= 0.95, f"a single copy found in {found.mean():.3f} of audits"
    verdict, _ = verdict_table(as_tiles(baseline[0], generated[0]), CLASSES, SOURCES, "base")
    table = verdict.set_index(["class", "source"])
    name = as_tiles(baseline[0], generated[0]).query(f"source == '{SOURCES[source[0]]}' and r >= 0.95")[
        "tile"
    ]
    for key in [(CLASSES[klass[0]], SOURCES[source[0]]), ("ALL", SOURCES[source[0]])]:
        assert table.loc[key, "verdict"] == "copies suspected"
        assert table.loc[key, "tail_tile"] == name.iloc[0]
