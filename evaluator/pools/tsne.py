"""t-SNE maps of image features per class: reference vs each generated pool (the paper's Fig. 2B).

For each class, features of a random subset of the reference and of every pool are embedded
jointly (one t-SNE per class, so the sources share coordinates), after a PCA to at most 50
dimensions as van der Maaten recommends for high-dimensional inputs. Generated images that
cover the real distribution mix with the reference points; mode collapse shows as tight
islands. Features come from the same cache as FID, so running both extracts them once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from evaluator.pools.features import FeatureSettings, pool_features, read_pools
from evaluator.pools.report import figure_bytes, write_outputs
from histosynth.errors import HistosynthError
from histosynth.sampling import sample_files

logger = logging.getLogger(__name__)

REFERENCE_LABEL = "reference"
PCA_DIMENSIONS = 50
EXACT_UP_TO = 300  # below this, exact t-SNE beats Barnes-Hut, whose per-iteration overhead dominates
TSNE_OUTPUTS = ("tsne.csv", "tsne.png", "tsne.pdf")


@dataclass(frozen=True)
class TsneSettings(FeatureSettings):
    """How `compute_tsne` maps pools: feature extraction (`FeatureSettings`) plus these.

    Attributes:
        classes: classes to map; None takes each pool's classes.
        per_source: at most this many images per class and source, drawn with
            `histosynth.sampling.sample_files` (scope: source, class), so large pools stay
            legible and the embedding fast; adding a pool or a class changes no other's draw.
        perplexity: t-SNE perplexity; lowered to (n - 1) / 3 for classes with few points.
        seed: seeds the subsets, PCA and t-SNE.
    """

    classes: Sequence[str] | None = None
    per_source: int = 500
    perplexity: float = 30.0
    seed: int = 0


@dataclass(frozen=True)
class TsneResult:
    """The embedding: one row per image (class, source, file, x, y), and the sources in legend order."""

    table: pd.DataFrame
    sources: list[str]


def compute_tsne(
    reference: str | Path, pools: Mapping[str, str | Path], settings: TsneSettings | None = None
) -> TsneResult:
    """Embed each class's reference and pool features in 2-D, one joint t-SNE per class.

    Args:
        reference: the real pool.
        pools: name -> generated pool folder, in legend order.
        settings: see `TsneSettings`; None uses its defaults (the Inception extractor).

    Returns:
        The table (class, source, file, x, y) and the sources, reference first.

    Raises:
        PoolError, ImageError, ExtractorError, HistosynthError: bad pools, images or settings.
    """
    settings = settings or TsneSettings()
    if settings.per_source < 2:
        raise HistosynthError(f"--per-source {settings.per_source}: need at least 2 images per source")
    if settings.perplexity <= 0:
        raise HistosynthError(f"--perplexity {settings.perplexity}: must be positive")
    if REFERENCE_LABEL in pools:
        raise HistosynthError(
            f"--pool {REFERENCE_LABEL}=...: the name {REFERENCE_LABEL!r} is taken by --reference"
        )
    reference_pool, generated = read_pools(reference, pools, settings.classes)
    extractor = settings.load()
    sources = {
        REFERENCE_LABEL: (
            reference_pool,
            pool_features(reference_pool, extractor, settings, label="reference"),
        )
    }
    for name, pool in generated.items():
        sources[name] = (pool, pool_features(pool, extractor, settings, label=name))
    class_order = list(dict.fromkeys(c for pool in generated.values() for c in pool.classes))
    frames = []
    for name in class_order:
        picked = [
            (
                source,
                *_subset(pool.files[name], features[name], settings.per_source, settings.seed, source, name),
            )
            for source, (pool, features) in sources.items()
            if name in pool.files
        ]
        coordinates = embed(
            np.concatenate([f for _, _, f in picked]), perplexity=settings.perplexity, seed=settings.seed
        )
        labels = [(source, path) for source, paths, _ in picked for path in paths]
        frames.append(
            pd.DataFrame(
                {
                    "class": name,
                    "source": [s for s, _ in labels],
                    "file": [str(p) for _, p in labels],
                    "x": coordinates[:, 0],
                    "y": coordinates[:, 1],
                }
            )
        )
    return TsneResult(pd.concat(frames, ignore_index=True), list(sources))


def write_tsne(result: TsneResult, out: str | Path) -> list[Path]:
    """Write `tsne.csv`, `tsne.png` and `tsne.pdf` into `out`, all or nothing.

    Args:
        result: what `compute_tsne` returned.
        out: the output folder (created if missing).

    Returns:
        The paths written.

    Raises:
        HistosynthError: `out` exists and is not a folder, or cannot be written.
    """
    figure = tsne_figure(result.table, result.sources)
    files = {
        "tsne.csv": result.table.to_csv(index=False, float_format="%.5g"),
        "tsne.png": figure_bytes(figure, "png"),
        "tsne.pdf": figure_bytes(figure, "pdf"),
    }
    return write_outputs(out, files, owned=TSNE_OUTPUTS)


# evaluate_fid, evaluate_tsne and evaluate_msssim repeat one shape on purpose: a front door per
# command, named alike and documented on its own, each calling its own compute_* and write_*.
def evaluate_tsne(
    reference: str | Path,
    pools: Mapping[str, str | Path],
    out: str | Path,
    settings: TsneSettings | None = None,
) -> TsneResult:
    """Map the pools against the reference and write table and figure (`histosynth evaluate tsne`).

    Everything is computed before anything is written, so bad input leaves `out` untouched.

    Args:
        reference: the real pool.
        pools: name -> generated pool folder, in legend order.
        out: the output folder for `tsne.csv`, `tsne.png` and `tsne.pdf`.
        settings: see `TsneSettings`; None uses its defaults.

    Returns:
        The result (see `compute_tsne`).

    Raises:
        PoolError, ImageError, ExtractorError, HistosynthError: bad pools, images, settings,
            or an output folder that cannot be written.
    """
    result = compute_tsne(reference, pools, settings)
    write_tsne(result, out)
    return result


def embed(features: np.ndarray, *, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of (n, d) features after PCA to at most 50 dimensions (exact up to 300 points).

    Raises:
        HistosynthError: fewer than 4 points (t-SNE needs a neighbourhood to preserve).
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    n = len(features)
    if n < 4:
        raise HistosynthError(f"t-SNE needs at least 4 images per class, got {n}")
    features = np.asarray(features, dtype=np.float64)
    components = min(PCA_DIMENSIONS, n, features.shape[1])
    if features.shape[1] > components:
        features = PCA(n_components=components, random_state=seed).fit_transform(features)
    usable = min(perplexity, (n - 1) / 3)
    if usable < perplexity:
        logger.info("t-SNE: perplexity lowered from %g to %.3g for %d points", perplexity, usable, n)
    method = "exact" if n <= EXACT_UP_TO else "barnes_hut"
    tsne = TSNE(n_components=2, perplexity=usable, init="pca", random_state=seed, method=method)
    return tsne.fit_transform(features)


def tsne_figure(table: pd.DataFrame, sources: Sequence[str]) -> Figure:
    """One scatter panel per class, colours per source (reference first), shared legend."""
    classes = list(dict.fromkeys(table["class"]))
    columns = min(3, len(classes))
    rows = math.ceil(len(classes) / columns)
    figure = Figure(figsize=(3.2 * columns, 3.0 * rows + 0.5), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    colours = {source: f"C{index}" for index, source in enumerate(sources)}
    for ax, name in zip(axes.flat, classes, strict=False):
        part = table[table["class"] == name]
        for source in sources:
            points = part[part["source"] == source]
            if len(points):
                ax.scatter(points["x"], points["y"], s=4, alpha=0.6, color=colours[source], label=source)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(classes) :]:
        ax.set_axis_off()
    legend: dict[str, object] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    figure.legend(
        list(legend.values()), list(legend), loc="outside lower center", ncols=len(legend), markerscale=3
    )
    return figure


def _subset(
    files: list[Path], features: np.ndarray, limit: int, seed: int, *scope: str
) -> tuple[list[Path], np.ndarray]:
    """At most `limit` files of one class and source with their features, drawn for (seed, scope)."""
    chosen = sample_files(range(len(files)), limit, seed, *scope)
    return [files[i] for i in chosen], features[chosen]
