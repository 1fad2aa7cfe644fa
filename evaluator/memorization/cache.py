"""Grayscale tile matrices for the memorization audit, decoded once and kept on disk.

Decoding 100,000 training TIFFs (and upscaling them to 256x256) takes far longer than the
correlation search itself, so each training class is decoded once into a uint8 matrix
(one row of H*W grayscale pixels per tile) stored as a `.npy` file in the user cache dir
and memory-mapped by later runs. Beside the pixels we keep each tile's mean and centred
norm, which the search needs and which would otherwise cost another pass over the data.

A cache entry is keyed by the class folder's listing (relative paths, byte sizes and
modification times) and the tile size, so editing, adding or removing a training tile
rebuilds that class only. The new entry supersedes the one built from the folder's earlier
listing (same folder, class and size), which is removed once the new one is committed:
otherwise every edit of a training set would leave an orphan of about 6.5 GB per 100,000
tiles at 256x256 behind. Entries are written to temporary files and renamed into place,
the metadata last, so an interrupted run leaves either a complete entry or none.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from histosynth.cache import cache_dir as histosynth_cache_dir
from histosynth.errors import HistosynthError, ImageError
from histosynth.files import atomic_write_bytes, atomic_write_text
from histosynth.images import load_rgb

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the layout of a cache entry changes
_STATS_CHUNK = 512  # rows per pass when computing means and norms
_ENTRY_KEY = re.compile(r"^[0-9a-f]{32}$")  # committed entries; temporary files start with "."


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The folder holding the memorization cache: `memorization/` in histosynth's cache folder
    (`histosynth.cache.cache_dir`, which `cache_dir` overrides), beside the other apps' caches."""
    return histosynth_cache_dir(cache_dir) / "memorization"


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma (L = 0.299 R + 0.587 G + 0.114 B), computed by PIL's "L" conversion.

    Using PIL's own conversion keeps the audit's grayscale identical to what a reader
    gets from `Image.convert("L")`, the usual way the paper's check is reproduced.
    """
    return np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.uint8)


def load_gray(path: str | Path, size: int | None) -> np.ndarray:
    """Decode one tile as an (H, W) uint8 luma image, resized bilinearly to `size` when given.

    Raises:
        ImageError: the file cannot be decoded.
    """
    return to_gray(load_rgb(path, size))


def load_gray_stack(
    paths: Sequence[Path],
    size: int | None,
    out: np.ndarray | None = None,
    workers: int | None = None,
    advance: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Decode tiles into an (N, H*W) uint8 matrix, checking that they share one square shape.

    Decoding runs in a thread pool (PIL and tifffile release the GIL while decoding).

    Args:
        paths: the tiles, in the row order wanted.
        size: the side to resize to, or None to keep the native size.
        out: an (N, H*W) uint8 array (e.g. a memmap) to fill; None allocates one whose
            width is taken from the first tile.
        workers: decoding threads; None uses the CPU count.
        advance: called with 1 for each tile decoded (progress).

    Returns:
        The filled matrix.

    Raises:
        HistosynthError: no paths, a tile that is not square, or tiles of different sizes
            (the message names the first tile whose size differs).
        ImageError: a tile cannot be decoded.
    """
    if not paths:
        raise HistosynthError("no tiles to decode")
    first = load_gray(paths[0], size)
    _check_square(first, paths[0])
    if out is None:
        out = np.empty((len(paths), first.size), dtype=np.uint8)
    if out.shape != (len(paths), first.size):
        raise HistosynthError(
            f"{paths[0]}: tile of {first.shape[0]}x{first.shape[1]} px does not fit a matrix of "
            f"shape {out.shape}"
        )
    out[0] = first.reshape(-1)

    def decode(index: int) -> int:
        gray = load_gray(paths[index], size)
        if gray.shape != first.shape:
            raise HistosynthError(
                f"{paths[index]}: tile is {gray.shape[1]}x{gray.shape[0]} px but {paths[0]} is "
                f"{first.shape[1]}x{first.shape[0]} px; all tiles of a comparison must share a size "
                f"(pass a size to resize them)"
            )
        out[index] = gray.reshape(-1)
        return index

    if advance is not None:
        advance(1)
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for _ in pool.map(decode, range(1, len(paths))):
            if advance is not None:
                advance(1)
    return out


def tile_shape(gray_rows: np.ndarray) -> tuple[int, int]:
    """The (H, W) of square tiles stored as rows of H*W pixels."""
    side = int(round(np.sqrt(gray_rows.shape[1])))
    return side, side


@dataclass(frozen=True)
class GrayMatrix:
    """One class of training tiles as a uint8 matrix, with per-tile statistics.

    Attributes:
        name: the class folder name.
        paths: the tiles, in row order.
        pixels: (N, H*W) uint8 luma, usually a read-only memmap.
        mean: (N,) float64 pixel mean per tile.
        norm: (N,) float64 Euclidean norm of the mean-centred pixels (0 for a flat tile).
    """

    name: str
    paths: list[Path]
    pixels: np.ndarray
    mean: np.ndarray
    norm: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return tile_shape(self.pixels)


def row_stats(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row mean and centred norm of a uint8 matrix, in float64, a chunk at a time."""
    mean = np.empty(len(pixels))
    norm = np.empty(len(pixels))
    for start in range(0, len(pixels), _STATS_CHUNK):
        block = np.asarray(pixels[start : start + _STATS_CHUNK], dtype=np.float64)
        block_mean = block.mean(axis=1)
        mean[start : start + len(block)] = block_mean
        norm[start : start + len(block)] = np.linalg.norm(block - block_mean[:, None], axis=1)
    return mean, norm


def cache_key(folder: Path, paths: Sequence[Path], size: int | None) -> str:
    """Hex digest identifying a class folder's content (names, sizes, mtimes) at a tile size."""
    prefix = os.fspath(folder)
    listing = []
    for path in paths:  # tens of thousands per class: plain strings, not Path.relative_to
        name = os.fspath(path)
        info = os.stat(name)
        relative = name[len(prefix) :] if name.startswith(prefix) else name
        listing.append([relative, info.st_size, info.st_mtime_ns])
    payload = json.dumps(
        {"format": CACHE_FORMAT, "folder": str(folder.resolve()), "size": size, "files": listing}
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def load_class_matrix(
    name: str,
    folder: Path,
    paths: Sequence[Path],
    size: int | None,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    advance: Callable[[int], None] | None = None,
) -> GrayMatrix:
    """Return a class's grayscale matrix from the cache, decoding and caching it on a miss.

    Args:
        name: the class name (for messages and results).
        folder: the class folder; the cache key is computed from its listing.
        paths: the tiles of the class, in row order (as `read_pool` lists them).
        size: tile side to resize to, or None for the native size.
        cache_dir: overrides the cache location (see `cache_root`).
        workers: decoding threads on a miss.
        advance: progress callback, called with the number of tiles newly available.

    Raises:
        HistosynthError: no tiles; tiles that differ in size or are not square; a cache
            folder that cannot be written.
        ImageError: a tile cannot be decoded.
    """
    paths = list(paths)
    if not paths:
        raise HistosynthError(f"{folder}: no training tiles")
    root = cache_root(cache_dir)
    key = cache_key(folder, paths, size)
    cached = _read_entry(root, key, name, paths)
    if cached is not None:
        logger.info("class %s: %d training tiles from cache %s", name, len(paths), root / key)
        if advance is not None:
            advance(len(paths))
        return cached
    logger.info("class %s: decoding %d training tiles into cache %s", name, len(paths), root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise HistosynthError(f"{root}: cannot create the cache folder ({error})") from error
    first = load_gray(paths[0], size)
    _check_square(first, paths[0])
    resolved = str(folder.resolve())
    temps: list[Path] = []
    try:
        # The pixels are decoded straight into a memory-mapped temporary file (100,000 tiles
        # are GBs), so they cannot go through `atomic_write_bytes`, which takes the bytes whole.
        pixel_tmp = _temp_path(root, key, ".npy", temps)
        pixels = np.lib.format.open_memmap(
            pixel_tmp, mode="w+", dtype=np.uint8, shape=(len(paths), first.size)
        )
        load_gray_stack(paths, size, out=pixels, workers=workers, advance=advance)
        pixels.flush()
        mean, norm = row_stats(pixels)
        del pixels
        stats = io.BytesIO()
        np.save(stats, np.stack([mean, norm]))
        meta = {
            "format": CACHE_FORMAT,
            "class": name,
            "folder": resolved,
            "size": size,
            "shape": list(first.shape),
            "files": [path.relative_to(folder).as_posix() for path in paths],
        }
        os.replace(pixel_tmp, root / f"{key}.npy")
        atomic_write_bytes(root / f"{key}.stats.npy", stats.getvalue())
        atomic_write_text(root / f"{key}.json", json.dumps(meta))  # the metadata commits the entry
    except OSError as error:  # a full disk or a read-only cache, not a bad tile
        raise HistosynthError(f"{root}: cannot write the cache entry for class {name} ({error})") from error
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)
    entry = _read_entry(root, key, name, paths)
    if entry is None:
        raise HistosynthError(f"{root / key}.json: cache entry unreadable right after writing it")
    _prune_superseded(root, key, resolved, name, size)
    return entry


def _prune_superseded(root: Path, key: str, folder: str, name: str, size: int | None) -> None:
    """Remove the entries that entry `key` supersedes: same class folder, class and size.

    Such an entry was built from another listing of the folder than today's, and is only
    read again if the folder returns to exactly that listing. Its metadata goes first, which
    uncommits it; a file that cannot be removed (say, held open on Windows) is left with a
    warning, since the audit itself has succeeded.
    """
    identity = (folder, name, size)
    for meta_path in root.glob("*.json"):
        other = meta_path.name.removesuffix(".json")
        if other == key or not _ENTRY_KEY.match(other):
            continue
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # unreadable: it cannot be matched to this folder, so it is not ours to remove
        if (
            not isinstance(meta, dict)
            or (meta.get("folder"), meta.get("class"), meta.get("size")) != identity
        ):
            continue
        try:
            for suffix in (".json", ".npy", ".stats.npy"):
                (root / f"{other}{suffix}").unlink(missing_ok=True)
        except OSError as error:
            logger.warning("cannot remove superseded cache entry %s (%s)", meta_path, error)
        else:
            logger.info("class %s: removed superseded cache entry %s", name, root / other)


def _read_entry(root: Path, key: str, name: str, paths: list[Path]) -> GrayMatrix | None:
    """Open a committed cache entry, or None when it is absent or inconsistent."""
    meta_path = root / f"{key}.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        pixels = np.load(root / f"{key}.npy", mmap_mode="r")
        stats = np.load(root / f"{key}.stats.npy")
    except (OSError, ValueError) as error:
        logger.warning("cache entry %s unreadable (%s); rebuilding it", meta_path, error)
        return None
    if meta.get("format") != CACHE_FORMAT or pixels.shape[0] != len(paths) or stats.shape != (2, len(paths)):
        logger.warning("cache entry %s inconsistent; rebuilding it", meta_path)
        return None
    return GrayMatrix(name=name, paths=paths, pixels=pixels, mean=stats[0], norm=stats[1])


def _temp_path(root: Path, key: str, suffix: str, temps: list[Path]) -> Path:
    handle, name = tempfile.mkstemp(prefix=f".{key}-", suffix=suffix, dir=root)
    os.close(handle)
    temps.append(Path(name))
    return Path(name)


def _check_square(gray: np.ndarray, path: Path) -> None:
    if gray.shape[0] != gray.shape[1]:
        raise ImageError(
            f"{path}: tile is {gray.shape[1]}x{gray.shape[0]} px; the rotations of the memorization "
            f"audit need square tiles (pass a size to resize them)"
        )
