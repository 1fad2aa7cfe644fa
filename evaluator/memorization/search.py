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

The same blocked search runs in numpy (the CPU path: OpenBLAS's GEMM, no torch start-up) or in
torch on any device (`device="cuda"`, or `"cpu"`): uint8 training blocks cross to the device
(a quarter of the bytes of float32) and are cast there, and the running maximum stays on the
device, so only the best match per query comes back. Both paths compute the same float32
products; they differ by the summation order of the GEMM only (about 1e-6 in r).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
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


def default_device() -> str:
    """Where the search runs unless told: `cuda` when torch sees a GPU, else `numpy` (the CPU)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "numpy"


def nearest_tiles(
    queries: np.ndarray,
    references: Sequence[GrayMatrix],
    flips: bool = False,
    memory_mb: float = 2048,
    advance: Callable[[int], None] | None = None,
    device: str = "numpy",
) -> Matches:
    """For each query tile, its highest Pearson correlation with any reference tile.

    Args:
        queries: (N, H*W) uint8 luma rows of square tiles.
        references: matrices of (M_i, H*W) uint8 rows with their means and centred norms.
        flips: also try the 4 rotations of the mirrored query (8 transforms instead of 4).
        memory_mb: working memory for the float32 blocks (query chunk + training block).
        advance: progress callback, called with the number of reference rows scanned in each
            block (summed over query chunks).
        device: `numpy` (the CPU path) or a torch device (`cuda`, `cuda:1`, `cpu`).

    Returns:
        The best r per query and the matrix, row and transform that gave it. Ties keep the
        first reference in order and the first transform in `TRANSFORMS` order.

    Raises:
        ValueError: no references, widths that differ from the queries', or an unknown device.
    """
    if not references:
        raise ValueError("nearest_tiles needs at least one reference matrix")
    for reference in references:
        if reference.pixels.shape[1] != queries.shape[1]:
            raise ValueError(f"reference {reference.name!r} rows have another width than the queries")
    n_transforms = 8 if flips else 4
    chunk, block_rows = block_sizes(queries.shape[1], n_transforms, memory_mb)
    if device == "numpy":
        block_buffer = np.empty((block_rows, queries.shape[1] + 1), dtype=np.float32)

        def search(part: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            return _search_chunk(part, references, n_transforms, block_buffer, advance)
    else:
        torch_device = _torch_device(device)

        def search(part: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            return _search_chunk_torch(part, references, n_transforms, block_rows, torch_device, advance)

    results = [
        _best_transform(*search(queries[start : start + chunk]), n_transforms)
        for start in range(0, len(queries), chunk)
    ]
    return Matches(*(np.concatenate(parts) for parts in zip(*results, strict=True)))


def _torch_device(device: str):
    import torch

    try:
        return torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"unknown device {device!r}: use numpy, cpu or cuda[:N]") from error


def _best_transform(
    best_r: np.ndarray, best_matrix: np.ndarray, best_row: np.ndarray, n_transforms: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per tile, the transform with the best r (the first on ties) and its match."""
    per_tile = best_r.reshape(-1, n_transforms)
    transform = per_tile.argmax(axis=1)
    pick = np.arange(len(per_tile)) * n_transforms + transform
    return best_r[pick].astype(np.float64), best_matrix[pick], best_row[pick], transform


def _search_chunk(
    queries: np.ndarray,
    references: Sequence[GrayMatrix],
    n_transforms: int,
    block_buffer: np.ndarray,
    advance: Callable[[int], None] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best r, matrix and row for every (query, transform) row over all references."""
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
        for start, stop, pixels in _row_blocks(reference.pixels, len(block_buffer)):
            size = stop - start
            train = block_buffer[:size]
            # The cast stays on one thread: OpenBLAS's workers still spin after each GEMM, and
            # casting in a thread pool beside them measured slower, not faster.
            np.copyto(train[:, :-1], pixels, casting="unsafe")
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
    return best_r, best_matrix, best_row


def _row_blocks(pixels: np.ndarray, block_rows: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """(start, stop, rows) blocks of a uint8 matrix (in memory or memory-mapped), in order."""
    for start in range(0, len(pixels), block_rows):
        stop = min(start + block_rows, len(pixels))
        yield start, stop, pixels[start:stop]


def _search_chunk_torch(
    queries: np.ndarray,
    references: Sequence[GrayMatrix],
    n_transforms: int,
    block_rows: int,
    device,
    advance: Callable[[int], None] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_search_chunk` in torch on `device`: the same products, the running max kept there."""
    import torch

    expanded = torch.from_numpy(_expand(standardize(queries), tile_shape(queries), n_transforms)).to(device)
    n_rows, width = expanded.shape
    best_r = torch.full((n_rows,), -torch.inf, dtype=torch.float32, device=device)
    best_matrix = torch.zeros(n_rows, dtype=torch.int64, device=device)
    best_row = torch.zeros(n_rows, dtype=torch.int64, device=device)
    train_buffer = torch.empty((block_rows, width), dtype=torch.float32, device=device)
    product_buffer = torch.empty(n_rows * block_rows, dtype=torch.float32, device=device)
    for index, reference in enumerate(references):
        inverse_norm = np.divide(
            1.0, reference.norm, out=np.zeros_like(reference.norm), where=reference.norm > 0
        )
        scale = torch.from_numpy(inverse_norm.astype(np.float32)).to(device)
        means = torch.from_numpy(reference.mean.astype(np.float32)).to(device)
        for start, stop, pixels in _row_blocks(reference.pixels, block_rows):
            size = stop - start
            # uint8 crosses to the device (from a writable copy); the cast happens there.
            block = torch.from_numpy(np.array(pixels)).to(device)
            train = train_buffer[:size]
            train[:, :-1].copy_(block)
            train[:, -1] = means[start:stop]
            product = product_buffer[: n_rows * size].view(n_rows, size)
            torch.matmul(expanded, train.T, out=product)
            product.mul_(scale[start:stop])
            value, column = product.max(dim=1)
            better = value > best_r
            best_r = torch.where(better, value, best_r)
            best_matrix = torch.where(better, index, best_matrix)
            best_row = torch.where(better, start + column, best_row)
            if advance is not None:
                advance(size)
    return best_r.cpu().numpy(), best_matrix.cpu().numpy(), best_row.cpu().numpy()


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
