"""Memorization audit: does a generator reproduce its training tiles?

A generator trained on patient data may only be shared if it does not copy its training
tiles. The paper's check (Niehues et al. 2024, Fig. 4): for n random generated tiles per
class, in grayscale and under each of the 4 rotations, the highest Pearson correlation of
pixels with any training tile of the class; the same for held-out real tiles (the baseline
of chance similarity). `audit_memorization` does that check, optionally with mirrored
rotations too and against all classes, keeps which training tile and transform gave each
best match, and adds a verdict that can see a few copies among many (`evaluator.memorization.stats`).
`evaluator.memorization.report` writes the tables, the figure and a gallery of the closest pairs
from it.

Grayscale is ITU-R 601-2 luma as PIL's "L" mode computes it; tiles are resized bilinearly to
`size` (256 in the paper) before conversion. The search itself is a blocked float32 GEMM over
a uint8 cache of the training tiles (`search`, `cache`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from evaluator.memorization.cache import GrayMatrix, load_class_matrix, load_gray_stack
from evaluator.memorization.search import TRANSFORMS, block_sizes, nearest_tiles
from evaluator.memorization.stats import check_threshold_rule, summarize, verdict_table
from histosynth.errors import HistosynthError
from histosynth.images import PAPER_SIZE
from histosynth.pools import Pool, list_classes, read_pool
from histosynth.progress import progress_bar, progress_enabled
from histosynth.sampling import sample_files

logger = logging.getLogger(__name__)

TILE_COLUMNS = ["source", "class", "tile", "r", "train_class", "train_tile", "transform", "flagged"]


@dataclass(frozen=True)
class MemorizationResult:
    """Everything the audit found; `report.write_report` renders it.

    Attributes:
        tiles: one row per audited tile (`TILE_COLUMNS`): its source, class and file, the best
            r, the training tile and the transform (see `TRANSFORMS`) that gave it, and
            whether it lies above its class's baseline threshold.
        summary: the paper's table (`stats.SUMMARY_COLUMNS`).
        verdict: threshold, count and shift tests per class and source; None without a baseline.
        sources: the generated sources, in the order given.
        baseline: the baseline's source name, or None.
        classes: the audited classes.
        size: the tile side compared (None: native size).
        threshold: the threshold rule; alpha: the verdict's significance level.
    """

    tiles: pd.DataFrame
    summary: pd.DataFrame
    verdict: pd.DataFrame | None
    sources: list[str]
    baseline: str | None
    classes: list[str]
    size: int | None
    threshold: str
    alpha: float


@dataclass(frozen=True)
class MemorizationSettings:
    """How `audit_memorization` samples, compares and judges.

    Attributes:
        baseline_name: the baseline's name in the outputs; default its folder name.
        n: tiles drawn at random per class and source (all of them where a class has fewer).
        baseline_n: tiles drawn per class from the baseline; None uses n. More baseline
            tiles give a threshold further into the tail and a count test that can see a
            few copies (with m baseline tiles, one copy in n tiles is significant only once
            n / (m + 1) is well below 1).
        size: the side tiles are resized to (bilinear); None compares at the native size,
            which all tiles must then share.
        flips: try the 4 rotations of the mirrored tile as well (8 transforms, not 4).
        across_classes: compare with the training tiles of every class, not only the
            tile's own class (catches a generator that copies across its class labels).
        classes: the classes to audit; None takes the first pool's, which every other pool
            and the baseline must then have exactly.
        threshold: `max` or `pQ` (e.g. `p99.9`): the order statistic of the baseline's best
            correlations above which a tile is flagged.
        alpha: significance level of the verdict.
        seed: seeds the sampling (`histosynth.sampling.sample_files`, scope: source, class);
            the same seed and folders give the same tiles, and adding a pool or a class
            changes no other's tiles.
        cache_dir: where decoded training tiles are cached (see `evaluator.memorization.cache`).
        memory_mb: working memory of the correlation search, in MiB.
        workers: decoding threads (None: the CPU count).
        progress: show progress bars; None shows them when stderr is a terminal.
    """

    baseline_name: str | None = None
    n: int = 200
    baseline_n: int | None = None
    size: int | None = PAPER_SIZE
    flips: bool = False
    across_classes: bool = False
    classes: Sequence[str] | None = None
    threshold: str = "max"
    alpha: float = 0.05
    seed: int = 0
    cache_dir: str | Path | None = None
    memory_mb: float = 2048
    workers: int | None = None
    progress: bool | None = None


def audit_memorization(
    train: str | Path,
    pools: Mapping[str, str | Path],
    baseline: str | Path | None = None,
    settings: MemorizationSettings | None = None,
) -> MemorizationResult:
    """Find each sampled tile's closest training tile and judge whether a generator copies.

    Args:
        train: the training pool (`<train>/<CLASS>/<tile>`), e.g. NCT-CRC-HE-100K.
        pools: generated pools by source name.
        baseline: held-out real tiles (e.g. CRC-VAL-HE-7K) with the same classes; without
            it the table is produced but no verdict and no flags.
        settings: see `MemorizationSettings`; None uses its defaults (the paper's check).

    Returns:
        The per-tile matches, the summary table and (with a baseline) the verdict.

    Raises:
        HistosynthError: bad settings, pools whose class sets differ, tiles of different
            sizes, a training pool lacking an audited class.
        PoolError: a missing or empty folder.
        ImageError: an undecodable tile.
    """
    settings = settings or MemorizationSettings()
    n, baseline_n, size, seed = settings.n, settings.baseline_n, settings.size, settings.seed
    sources = _check_arguments(pools, baseline, settings)
    folders = {name: Path(folder) for name, folder in pools.items()}
    base_name = None
    if baseline is not None:
        base_name = settings.baseline_name or Path(baseline).name
        folders[base_name] = Path(baseline)
    classes = _resolve_classes(folders, settings.classes)
    read = {name: read_pool(folder, classes) for name, folder in folders.items()}
    training = read_pool(train) if settings.across_classes else read_pool(train, classes)
    counts = {name: (baseline_n or n) if name == base_name else n for name in read}
    samples = {name: _sample(pool, counts[name], seed, name) for name, pool in read.items()}
    workers = settings.workers
    with _progress_bars(progress_enabled(settings.progress)) as bar:
        matrices = _load_training(training, size, settings.cache_dir, workers, bar)
        groups = [classes] if settings.across_classes else [[name] for name in classes]
        frames = []
        for group in groups:
            references = matrices if settings.across_classes else [m for m in matrices if m.name == group[0]]
            frames.append(
                _search_group(
                    samples, group, references, size, settings.flips, settings.memory_mb, workers, bar
                )
            )
    tiles = pd.concat(frames, ignore_index=True)
    tiles["flagged"] = False
    verdict = None
    if base_name is not None:
        verdict, flagged = verdict_table(
            tiles, classes, sources, base_name, settings.threshold, settings.alpha
        )
        tiles["flagged"] = flagged.to_numpy()
        _warn_overlap(tiles, base_name)
    order = sources + ([base_name] if base_name else [])
    tiles = _ordered(tiles, order, classes)
    return MemorizationResult(
        tiles=tiles,
        summary=summarize(tiles, classes, order),
        verdict=verdict,
        sources=sources,
        baseline=base_name,
        classes=classes,
        size=size,
        threshold=settings.threshold,
        alpha=settings.alpha,
    )


def _check_arguments(
    pools: Mapping[str, str | Path], baseline: str | Path | None, settings: MemorizationSettings
) -> list[str]:
    if not pools:
        raise HistosynthError("no generated pool to audit (give at least one NAME=DIR)")
    for field, value in {"n": settings.n, "baseline_n": settings.baseline_n, "size": settings.size}.items():
        if value is not None and value < 1:
            raise HistosynthError(f"{field} must be at least 1, got {value}")
    if not 0 < settings.alpha < 1:
        raise HistosynthError(f"alpha must lie between 0 and 1, got {settings.alpha}")
    check_threshold_rule(settings.threshold)
    name = settings.baseline_name or (Path(baseline).name if baseline is not None else None)
    if baseline is not None and name in pools:
        raise HistosynthError(f"baseline name {name!r} is also a pool name; pass another")
    return list(pools)


def _resolve_classes(folders: dict[str, Path], classes: list[str] | None) -> list[str]:
    """The audited classes; without an explicit list every pool must have the same class set."""
    if classes is not None:
        if not classes:
            raise HistosynthError("classes: empty list")
        return list(classes)
    found = {name: list_classes(folder) for name, folder in folders.items()}
    first_name, first = next(iter(found.items()))
    if not first:
        raise HistosynthError(f"{folders[first_name]}: no class folders (expected <pool>/<CLASS>/<image>)")
    for name, present in found.items():
        if present != first:
            missing = sorted(set(first) - set(present))
            extra = sorted(set(present) - set(first))
            detail = "; ".join(
                part
                for part in (
                    f"lacks {', '.join(missing)}" if missing else "",
                    f"has extra {', '.join(extra)}" if extra else "",
                )
                if part
            )
            raise HistosynthError(
                f"{folders[name]}: class folders differ from {folders[first_name]} ({detail}); "
                f"all pools and the baseline must have the same classes"
            )
    return first


def _sample(pool: Pool, n: int, seed: int, source: str) -> dict[str, list[Path]]:
    """n tiles per class, drawn by `sample_files` for (seed, source, class), so adding a pool or a
    class does not change the tiles drawn from the others."""
    drawn = {}
    for name, paths in pool.files.items():
        if len(paths) <= n:
            logger.info("%s/%s: %d tiles, fewer than n=%d; auditing all", source, name, len(paths), n)
        drawn[name] = sample_files(paths, n, seed, source, name)
    return drawn


def _load_training(
    training: Pool,
    size: int | None,
    cache_dir: str | Path | None,
    workers: int | None,
    bar: Callable[[str, int], Callable[[int], None]],
) -> list[GrayMatrix]:
    matrices = []
    for name, paths in training.files.items():
        advance = bar(f"training tiles {name}", len(paths))
        matrix = load_class_matrix(name, training.root / name, paths, size, cache_dir, workers, advance)
        if matrices and matrix.shape != matrices[0].shape:
            raise HistosynthError(
                f"{paths[0]}: training tiles of class {name} are {matrix.shape[1]}x{matrix.shape[0]} px but "
                f"those of {matrices[0].name} are {matrices[0].shape[1]}x{matrices[0].shape[0]} px; "
                f"pass a size to resize them"
            )
        matrices.append(matrix)
    return matrices


def _search_group(
    samples: dict[str, dict[str, list[Path]]],
    group: list[str],
    references: list[GrayMatrix],
    size: int | None,
    flips: bool,
    memory_mb: float,
    workers: int | None,
    bar: Callable[[str, int], Callable[[int], None]],
) -> pd.DataFrame:
    """Search the sampled tiles of `group`'s classes, from every source, in one pass."""
    owners = [(source, name, path) for name in group for source in samples for path in samples[source][name]]
    paths = [path for _, _, path in owners]
    queries = load_gray_stack(paths, size, workers=workers)
    expected = references[0].shape
    if queries.shape[1] != expected[0] * expected[1]:
        side = int(round(np.sqrt(queries.shape[1])))
        raise HistosynthError(
            f"{paths[0]}: tile is {side}x{side} px but the training tiles are "
            f"{expected[1]}x{expected[0]} px; pass a size to compare them at one size"
        )
    chunks = -(-len(queries) // block_sizes(queries.shape[1], 8 if flips else 4, memory_mb)[0])
    total = chunks * sum(len(matrix.pixels) for matrix in references)
    label = "searching " + (group[0] if len(group) == 1 else "all classes")
    matches = nearest_tiles(queries, references, flips, memory_mb, bar(label, total))
    return pd.DataFrame(
        {
            "source": [source for source, _, _ in owners],
            "class": [name for _, name, _ in owners],
            "tile": [str(path) for path in paths],
            "r": matches.r,
            "train_class": [references[i].name for i in matches.matrix],
            "train_tile": [
                str(references[i].paths[row]) for i, row in zip(matches.matrix, matches.row, strict=True)
            ],
            "transform": [TRANSFORMS[k] for k in matches.transform],
        }
    )


def _warn_overlap(tiles: pd.DataFrame, baseline: str) -> None:
    """Held-out tiles that match a training tile almost exactly mean the baseline leaks."""
    leaked = tiles[(tiles["source"] == baseline) & (tiles["r"] > 0.99)]
    if len(leaked):
        logger.warning(
            "%d baseline tiles correlate above 0.99 with a training tile (e.g. %s ~ %s); "
            "is the baseline really held out?",
            len(leaked),
            leaked.iloc[0]["tile"],
            leaked.iloc[0]["train_tile"],
        )


def _ordered(tiles: pd.DataFrame, sources: list[str], classes: list[str]) -> pd.DataFrame:
    source_rank = {name: i for i, name in enumerate(sources)}
    class_rank = {name: i for i, name in enumerate(classes)}
    keys = tiles.assign(_s=tiles["source"].map(source_rank), _c=tiles["class"].map(class_rank))
    keys = keys.sort_values(["_s", "_c", "tile"], kind="stable")
    return keys.drop(columns=["_s", "_c"]).reset_index(drop=True)[TILE_COLUMNS]


@contextmanager
def _progress_bars(enabled: bool) -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """Yield a factory of progress tasks, each a callback taking an increment.

    Disabled bars print nothing (tests, pipes, `progress=False`)."""
    with progress_bar(enabled) as bar:

        def task(description: str, total: int) -> Callable[[int], None]:
            task_id = bar.add_task(description, total=total)
            return lambda amount: bar.advance(task_id, amount)

        yield task
