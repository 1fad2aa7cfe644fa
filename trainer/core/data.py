"""A pool as training data: checked once, then read in a seeded order with seeded rotations.

The paper's only augmentation is a random 90-degree rotation, and tiles are upscaled bilinearly
from 224 to 256 px. Both the order of an epoch and the rotation of each draw are pure functions
of (seed, epoch, index) through `histosynth.sampling`, so a resumed run sees exactly the batches
an uninterrupted run would have seen, on any number of processes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from histosynth.errors import HistosynthError, PoolError
from histosynth.images import load_rgb
from histosynth.pools import read_pool, sha256_file
from histosynth.progress import progress_bar
from histosynth.sampling import scoped_rng
from trainer.core.options import FINGERPRINTS


@dataclass(frozen=True)
class TrainingPool:
    """The checked training pool: files in pool order, their labels and the class names."""

    root: Path
    classes: list[str]
    files: list[Path]
    labels: list[int]
    native_size: tuple[int, int]
    fingerprint: dict[str, object]


def read_training_pool(
    root: str | Path,
    classes: Sequence[str] | None = None,
    *,
    fingerprint: str = "names",
    progress: bool | None = None,
) -> TrainingPool:
    """Read and check a pool for class-conditional training.

    Args:
        root: a pool folder `<pool>/<CLASS>/<image>`.
        classes: the classes to train on, in label order; None takes every class folder.
        fingerprint: `names` or `sha256` (see `pool_fingerprint`).
        progress: show the hashing progress bar of `sha256` (None: when stderr is a terminal).

    Returns:
        The pool with labels in `classes` order and its fingerprint.

    Raises:
        PoolError: not a pool (see `histosynth.pools.read_pool`), fewer than two classes (a
            class-conditional model needs at least two), or images of different sizes (the
            paper's resize assumes one tile size; mixed sizes mean mixed data sets).
    """
    pool = read_pool(root, classes)
    if len(pool.classes) < 2:
        raise PoolError(
            f"{pool.root}: only one class ({pool.classes[0]}); a class-conditional model needs at least two"
        )
    files = [path for paths in pool.files.values() for path in paths]
    labels = [label for label, paths in enumerate(pool.files.values()) for _ in paths]
    first_size = image_size(files[0])
    for path in files[1:]:
        size = image_size(path)
        if size != first_size:
            raise PoolError(
                f"{path}: {size[0]}x{size[1]} px, but {files[0]} is {first_size[0]}x{first_size[1]}; "
                "a training pool holds tiles of one size"
            )
    return TrainingPool(
        root=pool.root,
        classes=pool.classes,
        files=files,
        labels=labels,
        native_size=first_size,
        fingerprint=pool_fingerprint(pool.root, files, fingerprint, progress=progress),
    )


def image_size(path: Path) -> tuple[int, int]:
    """Width and height from the file header (PIL), decoding only files PIL cannot size."""
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError):
        height, width = load_rgb(path).shape[:2]
        return width, height


def pool_fingerprint(
    root: Path, files: Sequence[Path], mode: str = "names", *, progress: bool | None = None
) -> dict[str, object]:
    """What a resumed run or a latent cache compares to know the pool is the one it was made from.

    Args:
        root: the pool folder; names are taken relative to it.
        files: the pool's files, in pool order.
        mode: `names`: a sha256 over the relative names and byte sizes (one `stat` per file,
            cheap for 100,000 tiles); `sha256`: a sha256 over the relative names and each
            file's own sha256 (every byte read, streamed, with a progress bar), which also
            tells an edited tile of unchanged size.
        progress: show the hashing bar (`sha256` only; None: when stderr is a terminal).

    Returns:
        The file count and the digest, under a key that names the mode.

    Raises:
        HistosynthError: an unknown mode.
    """
    if mode not in FINGERPRINTS:
        raise HistosynthError(f"--fingerprint {mode!r}: expected one of {', '.join(FINGERPRINTS)}")
    digest = hashlib.sha256()
    if mode == "names":
        for path in files:
            digest.update(f"{path.relative_to(root).as_posix()}\t{path.stat().st_size}\n".encode())
        return {"files": len(files), "names_and_sizes_sha256": digest.hexdigest()}
    with progress_bar(progress) as bar:
        task = bar.add_task(f"sha256 {root.name}", total=len(files))
        for path in files:
            digest.update(f"{path.relative_to(root).as_posix()}\t{sha256_file(path)}\n".encode())
            bar.advance(task)
    return {"files": len(files), "contents_sha256": digest.hexdigest()}


def rotation(seed: int, epoch: int, index: int) -> int:
    """Quarter turns (0..3) of tile `index` in `epoch`: the paper's only augmentation."""
    return int(scoped_rng(seed, "rotation", epoch, index).integers(4))


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of the `n` tiles in `epoch`."""
    return scoped_rng(seed, "order", epoch).permutation(n)


def epoch_batches(
    n: int,
    batch_size: int,
    seed: int,
    epoch: int,
    *,
    num_processes: int = 1,
    process_index: int = 0,
    skip: int = 0,
) -> list[list[tuple[int, int]]]:
    """This process's batches of `epoch` as lists of (epoch, tile index), from batch `skip` on.

    `batch_size` is this process's share. The epoch's order is cut into global batches of
    `batch_size x num_processes` tiles (an
    incomplete last one is dropped, so every step sees full batches); process p takes the p-th
    slice of each. `skip` drops the batches a resumed run has already trained on.
    """
    order = epoch_order(n, seed, epoch)
    step = batch_size * num_processes
    batches = []
    for start in range(skip * step, n - step + 1, step):
        mine = order[start + process_index * batch_size : start + (process_index + 1) * batch_size]
        batches.append([(epoch, int(index)) for index in mine])
    return batches


def steps_per_epoch(n: int, global_batch: int) -> int:
    """Optimizer steps in one epoch (full global batches only)."""
    return n // global_batch


def to_model_input(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [-1, 1], the range the CompVis models use."""
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 127.5 - 1.0


class TileDataset(torch.utils.data.Dataset):
    """Tiles of a training pool, indexed by (epoch, index) so the rotation is seeded.

    Items are `(image, label)`: image (3, size, size) float32 in [-1, 1] after the seeded
    quarter turn, label the class index.
    """

    def __init__(self, pool: TrainingPool, size: int, seed: int) -> None:
        self.pool = pool
        self.size = size
        self.seed = seed

    def __len__(self) -> int:
        return len(self.pool.files)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, index = key
        rgb = load_rgb(self.pool.files[index], size=self.size)
        turned = np.rot90(rgb, k=rotation(self.seed, epoch, index), axes=(0, 1))
        return to_model_input(turned), self.pool.labels[index]
