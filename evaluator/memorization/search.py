"""The nearest training tile of each query tile by Pearson correlation, as a blocked GEMM.

Pearson's r of two pixel vectors is the dot product of their standardised forms
(zero mean, unit norm), so "the highest correlation with any training tile" is a row-wise
max of one big matrix product. The training side is never standardised as float: since a
standardised query q sums to (almost) zero, q . (t - mean_t) = q . t - mean_t * sum(q), so
each training block is only cast from uint8 to float32 and multiplied; the rank-1
correction rides along in the same GEMM as one extra column (-sum(q) on the query side,
mean_t on the training side), and the result is scaled by 1 / ||t - mean_t|| (both
precomputed in the cache). The float32 training block and the result block are
preallocated and reused, so memory stays bounded by the caller's budget however many
training tiles there are.

Every query enters the product under each dihedral transform asked for (the 4 rotations,
optionally also the 4 rotations of the mirrored tile), and each query keeps the best r over
all training tiles and transforms, with which tile and transform gave it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from evaluator.memorization.cache import GrayMatrix, tile_shape

TRANSFORMS = (
    "rot0",
    "rot90",
    "rot180",
    "rot270",
    "fliplr",
    "fliplr+rot90",
    "fliplr+rot180",
    "fliplr+rot270",
)
"""Transform k mirrors left-right when k >= 4, then rotates by (k % 4) * 90 degrees
counter-clockwise (`np.rot90`). A match's transform maps the query onto the training tile."""


def apply_transform(image: np.ndarray, k: int) -> np.ndarray:
    """Apply transform `TRANSFORMS[k]` to one (H, W) or (H, W, C) image."""
    if k >= 4:
        image = image[:, ::-1]
    return np.rot90(image, k % 4)


def invert_transform(image: np.ndarray, k: int) -> np.ndarray:
    """Undo `apply_transform(., k)`: turns a matched training tile to line up with its query."""
    image = np.rot90(image, -(k % 4))
    if k >= 4:
        image = image[:, ::-1]
    return image


def standardize(pixels: np.ndarray) -> np.ndarray:
    """Rows as float32 vectors of zero mean and unit norm (means and norms accumulated in float64).

    A flat row (zero variance) has no defined correlation; it becomes the zero vector, so
    its correlation with anything reads 0.
    """
    rows = np.asarray(pixels, dtype=np.float32)
    rows -= np.mean(pixels, axis=1, dtype=np.float64)[:, None].astype(np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", rows, rows, dtype=np.float64))
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0).astype(np.float32)
    rows *= scale[:, None]
    return rows


@dataclass(frozen=True)
class Matches:
    """The best match of each query.

    Attributes:
        r: (N,) highest Pearson correlation found.
        matrix: (N,) index into the reference matrices searched.
        row: (N,) row of the best tile within that matrix.
        transform: (N,) index into `TRANSFORMS` of the transform of the query that gave r.
    """

    r: np.ndarray
    matrix: np.ndarray
    row: np.ndarray
    transform: np.ndarray


def block_sizes(n_pixels: int, n_transforms: int, memory_mb: float) -> tuple[int, int]:
    """(query tiles per chunk, training rows per block) that fit in about `memory_mb` MiB.

    Three quarters of the budget hold the chunk of transformed standardised queries (a
    larger chunk means fewer passes over the training matrix), a quarter the float32
    training block (capped at 1,024 rows: beyond that the GEMM gains nothing).
    """
    budget = memory_mb * 2**20
    row_bytes = 4 * n_pixels
    queries = max(1, int(0.75 * budget) // (row_bytes * n_transforms))
    block = int(min(1024, max(16, int(0.25 * budget) // row_bytes)))
    return queries, block


def nearest_tiles(
    queries: np.ndarray,
    references: Sequence[GrayMatrix],
    flips: bool = False,
    memory_mb: float = 2048,
    advance: Callable[[int], None] | None = None,
) -> Matches:
    """For each query tile, its highest Pearson correlation with any reference tile.

    Args:
        queries: (N, H*W) uint8 luma rows of square tiles.
        references: matrices of (M_i, H*W) uint8 rows with their means and centred norms.
        flips: also try the 4 rotations of the mirrored query (8 transforms instead of 4).
        memory_mb: working memory for the float32 blocks (query chunk + training block).
        advance: progress callback, called with the number of reference rows scanned in each
            block (summed over query chunks).

    Returns:
        The best r per query and the matrix, row and transform that gave it. Ties keep the
        first reference in order and the first transform in `TRANSFORMS` order.

    Raises:
        ValueError: no references, or widths that differ from the queries'.
    """
    if not references:
        raise ValueError("nearest_tiles needs at least one reference matrix")
    for reference in references:
        if reference.pixels.shape[1] != queries.shape[1]:
            raise ValueError(f"reference {reference.name!r} rows have another width than the queries")
    n_transforms = 8 if flips else 4
    chunk, block_rows = block_sizes(queries.shape[1], n_transforms, memory_mb)
    block_buffer = np.empty((block_rows, queries.shape[1] + 1), dtype=np.float32)
    results = [
        _search_chunk(queries[start : start + chunk], references, n_transforms, block_buffer, advance)
        for start in range(0, len(queries), chunk)
    ]
    return Matches(*(np.concatenate(parts) for parts in zip(*results, strict=True)))


def _search_chunk(
    queries: np.ndarray,
    references: Sequence[GrayMatrix],
    n_transforms: int,
    block_buffer: np.ndarray,
    advance: Callable[[int], None] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    expanded = _expand(standardize(queries), tile_shape(queries), n_transforms)
    n_rows = len(expanded)
    best_r = np.full(n_rows, -np.inf, dtype=np.float32)
    best_matrix = np.zeros(n_rows, dtype=np.int64)
    best_row = np.zeros(n_rows, dtype=np.int64)
    product_buffer = np.empty(n_rows * len(block_buffer), dtype=np.float32)
    every_row = np.arange(n_rows)
    for index, reference in enumerate(references):
        inverse_norm = np.divide(
            1.0, reference.norm, out=np.zeros_like(reference.norm), where=reference.norm > 0
        )
        for start in range(0, len(reference.pixels), len(block_buffer)):
            stop = min(start + len(block_buffer), len(reference.pixels))
            size = stop - start
            train = block_buffer[:size]
            # The cast stays on one thread: OpenBLAS's workers still spin after each GEMM, and
            # casting in a thread pool beside them measured slower, not faster.
            np.copyto(train[:, :-1], reference.pixels[start:stop], casting="unsafe")
            train[:, -1] = reference.mean[start:stop]
            product = product_buffer[: n_rows * size].reshape(n_rows, size)
            np.matmul(expanded, train.T, out=product)
            product *= inverse_norm[start:stop].astype(np.float32)
            column = product.argmax(axis=1)
            value = product[every_row, column]
            better = value > best_r
            best_r[better] = value[better]
            best_matrix[better] = index
            best_row[better] = start + column[better]
            if advance is not None:
                advance(size)
    per_tile = best_r.reshape(-1, n_transforms)
    transform = per_tile.argmax(axis=1)
    pick = np.arange(len(per_tile)) * n_transforms + transform
    return best_r[pick].astype(np.float64), best_matrix[pick], best_row[pick], transform


def _expand(rows: np.ndarray, shape: tuple[int, int], n_transforms: int) -> np.ndarray:
    """Stack each standardised tile under each transform: row i * n_transforms + k is tile
    i under transform k, followed by a last column of -sum(row) (the same for every
    transform, which only permutes pixels) that meets the training tile's mean in the GEMM."""
    tiles = rows.reshape(len(rows), *shape)
    n_pixels = rows.shape[1]
    expanded = np.empty((len(rows) * n_transforms, n_pixels + 1), dtype=np.float32)
    sums = -rows.sum(axis=1, dtype=np.float64)
    for k in range(n_transforms):
        turned = tiles[:, :, ::-1] if k >= 4 else tiles
        target = expanded[k::n_transforms, :n_pixels].reshape(tiles.shape)  # a view: no extra copy
        np.copyto(target, np.rot90(turned, k % 4, axes=(1, 2)))
        expanded[k::n_transforms, n_pixels] = sums
    return expanded
