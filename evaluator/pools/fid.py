"""FID and KID per class between generated pools and a reference pool (the paper's Table 2).

`evaluate_fid` is the front door behind `histosynth evaluate fid`. It follows clean-fid's
recipe ("clean" resize, TorchScript Inception-v3 features) through `evaluator.pools.features`, which
caches the features, and differs from clean-fid in the Frechet distance itself. Instead of
`scipy.linalg.sqrtm` of the non-symmetric product S1 S2 (slow, deprecated in clean-fid's call,
complex round-off), Tr sqrt(S1 S2) is the sum of square roots of the eigenvalues of a
symmetric PSD matrix similar to S1 S2, in float64:

    L^T S2 L  with S1 = L L^T (Cholesky), when either covariance is positive definite;
    A S2 A    with A = S1^(1/2) from `eigh`, when both are singular;
    Xc S1 Xc^T / (n - 1), n x n, when the n generated features Xc (centred) number n <= d.

The last form makes small classes (n < d, singular covariance, where sqrtm is unreliable)
cheap and exact, and makes a bootstrap of FID affordable. Because small classes also make FID
biased, every row carries KID (unbiased, with its spread over subsets, or over bootstrap
resamples where both sets fit in one subset), the bootstrap spread of FID and the sample counts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from evaluator.pools.features import FeatureSettings, pool_features, read_pools
from evaluator.pools.kid import kernel_inception_distance
from evaluator.pools.report import latex_section, markdown_section, pivot_cells, write_outputs
from histosynth.errors import HistosynthError, PoolError
from histosynth.tables import ALL_CLASSES

logger = logging.getLogger(__name__)

FID_COLUMNS = ["class", "source", "fid", "kid_mean", "kid_std", "n_generated", "n_reference", "fid_boot_std"]
FID_OUTPUTS = ("fid.csv", "fid.md", "fid.tex", "fid.json")


def sqrtm_psd(sigma: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix via `eigh` (round-off eigenvalues zeroed)."""
    eigenvalues, eigenvectors = np.linalg.eigh(_symmetric(sigma))
    return (eigenvectors * np.sqrt(_drop_round_off(eigenvalues))) @ eigenvectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    d^2 = |mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr sqrt(S1 S2), the trace taken from a symmetric
    matrix similar to S1 S2 (see the module docstring), so `eigvalsh` applies and singular
    covariances stay exact. Round-off below zero (identical inputs) is clipped to 0.

    Raises:
        HistosynthError: the means or covariances have mismatched or non-square shapes.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    dim = mu1.shape[0]
    if mu1.shape != (dim,) or mu2.shape != (dim,) or sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise HistosynthError(
            f"Frechet distance: shapes mu1 {mu1.shape}, sigma1 {sigma1.shape}, mu2 {mu2.shape}, "
            f"sigma2 {sigma2.shape} do not describe two Gaussians of one dimension"
        )
    diff = mu1 - mu2
    cross = _trace_sqrt_product(sigma1, sigma2)
    return _non_negative(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * cross)


class FrechetReference:
    """A reference class's mean and covariance, computed once and compared against many samples.

    Each pool, and each bootstrap resample of a pool, then costs one symmetric eigenvalue
    problem: n x n for n <= d generated features (the nonzero eigenvalues of S_ref S_gen are
    those of Xc S_ref Xc^T / (n - 1)), d x d otherwise.
    """

    def __init__(self, features: np.ndarray) -> None:
        features = _as_features(features, "reference")
        self.n, self.dim = features.shape
        self.mu = features.mean(axis=0)
        self.sigma = np.cov(features, rowvar=False).reshape(self.dim, self.dim)
        self.trace = float(np.trace(self.sigma))

    def distance(self, features: np.ndarray) -> float:
        """FID between `features` (n, d) and this reference."""
        features = self._check(features)
        n = features.shape[0]
        if n <= self.dim:
            return self._gram_distance(features, features @ self.sigma)
        mu = features.mean(axis=0)
        centered = features - mu
        sigma = centered.T @ centered / (n - 1)
        diff = mu - self.mu
        cross = _trace_sqrt_product(sigma, self.sigma)
        return _non_negative(diff @ diff + self.trace + np.trace(sigma) - 2.0 * cross)

    def bootstrap_std(self, features: np.ndarray, replicates: int, seed: int = 0) -> float:
        """Standard deviation of FID over resamples (with replacement) of the generated features.

        Only the generated side is resampled: it is the small one in the studies this targets,
        and its sampling noise is what a reader needs to compare two generators. For n <= d the
        product X S_ref is computed once, so a replicate costs O(n^2 d) instead of O(n d^2).
        """
        if replicates < 2:
            raise HistosynthError(f"--n-bootstrap {replicates}: need at least 2 replicates (or 0 for none)")
        features = self._check(features)
        rng = np.random.default_rng(seed)
        n = len(features)
        draws = [rng.integers(0, n, n) for _ in range(replicates)]
        if n > self.dim:
            values = [self.distance(features[draw]) for draw in draws]
        else:
            projected = features @ self.sigma
            values = [self._gram_distance(features[draw], projected[draw]) for draw in draws]
        return float(np.std(values, ddof=1))

    def _gram_distance(self, features: np.ndarray, projected: np.ndarray) -> float:
        """FID for n <= d features given `projected` = features @ S_ref, via an n x n eigenproblem."""
        n = features.shape[0]
        mu = features.mean(axis=0)
        centered = features - mu
        trace = float(np.einsum("ij,ij->", centered, centered)) / (n - 1)
        gram = (projected - mu @ self.sigma) @ centered.T / (n - 1)  # Xc S_ref Xc^T / (n - 1)
        diff = mu - self.mu
        return _non_negative(diff @ diff + self.trace + trace - 2.0 * _trace_sqrt_psd(gram))

    def _check(self, features: np.ndarray) -> np.ndarray:
        features = _as_features(features, "generated")
        if features.shape[1] != self.dim:
            raise HistosynthError(f"FID: {features.shape[1]}-d features against a {self.dim}-d reference")
        return features


@dataclass(frozen=True)
class FidSettings(FeatureSettings):
    """How `compute_fid` compares pools: feature extraction (`FeatureSettings`) plus these.

    Attributes:
        classes: classes to compare; None takes each pool's classes.
        kid_subsets, kid_subset_size: KID subset draws (clean-fid's defaults: 100 x 1000).
        n_bootstrap: FID bootstrap replicates (0: none) for rows with at most
            `bootstrap_max_n` generated images; beyond that each replicate costs n d^2 and the
            spread is small, so `fid_boot_std` is left empty.
        bootstrap_max_n: the largest row that gets a bootstrap.
        seed: seeds KID subsets and bootstrap resamples.
    """

    classes: Sequence[str] | None = None
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    n_bootstrap: int = 20
    bootstrap_max_n: int = 2048
    seed: int = 0


@dataclass(frozen=True)
class FidResult:
    """What `compute_fid` found, and what `fid.json` records about how.

    Attributes:
        table: one row per (class, source) in `FID_COLUMNS` order.
        record: the pools, classes, extractor identity and settings, as written to `fid.json`.
    """

    table: pd.DataFrame
    record: dict[str, object]


def compute_fid(
    reference: str | Path, pools: Mapping[str, str | Path], settings: FidSettings | None = None
) -> FidResult:
    """FID, KID and counts per class (plus `ALL` classes pooled) of each pool against the reference.

    Args:
        reference: the real pool.
        pools: name -> generated pool folder, in table row order.
        settings: see `FidSettings`; None uses its defaults (the Inception extractor).

    Returns:
        The table, one row per (class, source); class `ALL` pools all of that source's
        classes, against the reference's images of the same classes. And the record of how.

    Raises:
        PoolError, ImageError, ExtractorError, HistosynthError: bad pools, images or settings.
    """
    settings = settings or FidSettings()
    if settings.n_bootstrap < 0 or settings.n_bootstrap == 1:
        raise HistosynthError(f"--n-bootstrap {settings.n_bootstrap}: use 0 (none) or at least 2 replicates")
    reference_pool, generated = read_pools(reference, pools, settings.classes)
    for pool in (reference_pool, *generated.values()):
        for name, files in pool.files.items():
            if len(files) < 2:
                raise PoolError(f"{pool.root / name}: FID and KID need at least 2 images per class, found 1")
    extractor = settings.load()
    reference_features = pool_features(reference_pool, extractor, settings, label="reference")
    references: dict[tuple[str, ...], tuple[np.ndarray, FrechetReference]] = {}
    rows = []
    for source, pool in generated.items():
        features = pool_features(pool, extractor, settings, label=source)
        groups = {name: (name,) for name in pool.classes} | {ALL_CLASSES: tuple(pool.classes)}
        for name, members in groups.items():
            if members not in references:  # shared by every pool compared on these classes
                real = np.concatenate([reference_features[c] for c in members])
                references[members] = (real, FrechetReference(real))
            real, reference_stats = references[members]
            fake = np.concatenate([features[c] for c in members])
            kid_mean, kid_std = kernel_inception_distance(
                fake,
                real,
                num_subsets=settings.kid_subsets,
                max_subset_size=settings.kid_subset_size,
                seed=settings.seed,
                device=extractor.device,
            )
            spread = (
                reference_stats.bootstrap_std(fake, settings.n_bootstrap, settings.seed)
                if settings.n_bootstrap and len(fake) <= settings.bootstrap_max_n
                else float("nan")
            )
            rows.append(
                {
                    "class": name,
                    "source": source,
                    "fid": reference_stats.distance(fake),
                    "kid_mean": kid_mean,
                    "kid_std": kid_std,
                    "n_generated": len(fake),
                    "n_reference": len(real),
                    "fid_boot_std": spread,
                }
            )
    record = {
        "reference": str(reference_pool.root),
        "pools": {name: str(pool.root) for name, pool in generated.items()},
        "classes": {name: pool.classes for name, pool in generated.items()},
        "extractor": extractor.identity,
        "mode": settings.mode,
        "kid_subsets": settings.kid_subsets,
        "kid_subset_size": settings.kid_subset_size,
        "bootstrap": settings.n_bootstrap,  # fid.json keeps the key it always had
        "bootstrap_max_n": settings.bootstrap_max_n,
        "seed": settings.seed,
    }
    return FidResult(pd.DataFrame(rows, columns=FID_COLUMNS), record)


def write_fid(result: FidResult, out: str | Path) -> list[Path]:
    """Write `fid.csv`, `fid.md`, `fid.tex` and `fid.json` into `out`, all or nothing.

    Args:
        result: what `compute_fid` returned.
        out: the output folder (created if missing); files of an earlier run that this one
            does not write are removed.

    Returns:
        The paths written.

    Raises:
        HistosynthError: `out` exists and is not a folder, or cannot be written.
    """
    files = render_fid_tables(result.table) | {"fid.json": json.dumps(result.record, indent=2) + "\n"}
    return write_outputs(out, files, owned=FID_OUTPUTS)


# evaluate_fid, evaluate_tsne and evaluate_msssim repeat one shape on purpose: a front door per
# command, named alike and documented on its own, each calling its own compute_* and write_*.
def evaluate_fid(
    reference: str | Path,
    pools: Mapping[str, str | Path],
    out: str | Path,
    settings: FidSettings | None = None,
) -> FidResult:
    """Compare each pool with the reference and write the tables (`histosynth evaluate fid`).

    Everything is computed before anything is written, so bad input leaves `out` untouched.

    Args:
        reference: the real pool.
        pools: name -> generated pool folder, in table row order.
        out: the output folder for `fid.csv`, `fid.md`, `fid.tex` and `fid.json`.
        settings: see `FidSettings`; None uses its defaults.

    Returns:
        The result (see `compute_fid`).

    Raises:
        PoolError, ImageError, ExtractorError, HistosynthError: bad pools, images, settings,
            or an output folder that cannot be written.
    """
    result = compute_fid(reference, pools, settings)
    write_fid(result, out)
    return result


def render_fid_tables(table: pd.DataFrame) -> dict[str, str]:
    """`fid.csv`, `fid.md` and `fid.tex`: the long table and the paper's Table 2 layout.

    Markdown and LaTeX hold three tables with one row per source and one column per class:
    FID (± bootstrap std where computed), KID x 10^3 (± std over subsets, or over bootstrap
    resamples where both sets fit in one subset), and the counts `n_generated / n_reference`.
    """
    order = list(dict.fromkeys(table["class"]))
    counts = table.assign(n=table["n_generated"].astype(str) + " / " + table["n_reference"].astype(str))
    common = dict(rows="source", columns="class", column_order=order)
    tables = [
        (
            "FID per class (± bootstrap std of the generated sample)",
            pivot_cells(table, "fid", "fid_boot_std", digits=1, **common),
        ),
        (
            "KID x 10^3 per class (± std over subsets, or over bootstraps when both sets fit in one)",
            pivot_cells(table, "kid_mean", "kid_std", digits=2, scale=1e3, **common),
        ),
        ("Images per class: generated / reference", pivot_cells(counts, "n", None, digits=None, **common)),
    ]
    markdown = [markdown_section(title, frame) for title, frame in tables]
    latex = [latex_section(title, frame) for title, frame in tables]
    return {
        "fid.csv": table.to_csv(index=False, float_format="%.6g"),
        "fid.md": "\n".join(markdown),
        "fid.tex": "\n".join(latex),
    }


def _as_features(features: np.ndarray, side: str) -> np.ndarray:
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 2:
        raise HistosynthError(f"FID: {side} features must be (n >= 2, d), got shape {array.shape}")
    return array


def _non_negative(value: float) -> float:
    """FID is a squared distance; round-off leaves identical sets a hair below zero (~1e-9), clip it."""
    return max(float(value), 0.0)


def _symmetric(matrix: np.ndarray) -> np.ndarray:
    return (matrix + matrix.T) / 2.0


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr sqrt(S1 S2): eigenvalues of L^T S_other L for the Cholesky factor L of whichever
    covariance is positive definite, else of A S2 A with A = S1^(1/2) from `eigh`.

    One Cholesky, one product and `eigvalsh` cost about a fifth of sqrtm's Schur route at 2048
    dimensions (an SVD of L2^T L1 was measured slower than `eigvalsh` here).
    """
    for factored, other in ((sigma1, sigma2), (sigma2, sigma1)):
        try:
            lower = np.linalg.cholesky(factored)
        except np.linalg.LinAlgError:
            continue
        return _trace_sqrt_psd(lower.T @ other @ lower)
    root = sqrtm_psd(sigma1)
    return _trace_sqrt_psd(root @ sigma2 @ root)


def _trace_sqrt_psd(matrix: np.ndarray) -> float:
    """Sum of square roots of a symmetric PSD matrix's eigenvalues (round-off eigenvalues zeroed)."""
    return float(np.sqrt(_drop_round_off(np.linalg.eigvalsh(_symmetric(matrix)))).sum())


def _drop_round_off(eigenvalues: np.ndarray) -> np.ndarray:
    """Zero eigenvalues within round-off of zero (|lambda| <= d * eps * max|lambda|).

    A singular covariance (n < d) has d - n + 1 eigenvalues that are exactly zero in theory but
    +-1e-15 in floating point; their square roots (~1e-8 each) would add up to visible noise.
    """
    if eigenvalues.size == 0:
        return eigenvalues
    tolerance = eigenvalues.size * np.finfo(np.float64).eps * np.abs(eigenvalues).max()
    return np.where(eigenvalues > tolerance, eigenvalues, 0.0)
