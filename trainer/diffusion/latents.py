"""The frozen autoencoder's view of a pool: loading it, and a latent cache of all 4 rotations.

Training a latent diffusion model encodes every tile once per step in CompVis; here each tile is
encoded once in each of its 4 quarter turns (the paper's only augmentation) and the encoder's
output is cached, so an epoch costs U-Net passes only. What is cached is what CompVis samples
from: for a KL autoencoder the posterior's mean and standard deviation (a fresh latent
`mean + std * noise` is drawn at every step, as `posterior.sample()` does), for a VQ autoencoder
the pre-quantisation latents (CompVis `VQModelInterface.encode`; decoding quantises).

The cache is a float32 `.npy` memory map of shape (tiles, 4 rotations, channels, h, w) in
`histosynth.cache.cache_dir()/latents/<key>/`, the key hashing the autoencoder's weights, the
pool fingerprint and the tile size; it is built in a hidden folder and renamed when complete.
At the paper's scale (100,000 tiles, 32 x 32 x 4 latents) it takes 6.6 GB for VQ and 13 GB for
KL (mean and std); `HISTOSYNTH_CACHE_DIR` moves it to a scratch disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from diffusers import AutoencoderKL, VQModel

from histosynth.cache import cache_dir
from histosynth.errors import HistosynthError
from histosynth.files import atomic_write_text, fsync_folder
from histosynth.images import load_rgb
from histosynth.progress import progress_bar
from trainer.core.data import TrainingPool, rotation, to_model_input
from trainer.core.model_folder import model_hash, read_model_info

AUTOENCODER_KINDS = {"kl-autoencoder": AutoencoderKL, "vq-autoencoder": VQModel}
CACHE_VERSION = 1
# tiles per encoder pass, each in its 4 rotations: 64 images of 256 px at f8 fit a 24 GB card
ENCODE_TILES = 16


def load_autoencoder(folder: str | Path) -> tuple[AutoencoderKL | VQModel, dict[str, Any]]:
    """A trained autoencoder folder as a frozen diffusers model in eval mode, with its `histosynth.json`.

    Raises:
        HistosynthError: no `histosynth.json`, or the folder holds another kind of model.
    """
    info = read_model_info(folder, list(AUTOENCODER_KINDS))
    model = AUTOENCODER_KINDS[info["kind"]].from_pretrained(Path(folder).expanduser())
    return model.eval().requires_grad_(False), info


@dataclass(frozen=True)
class LatentCache:
    """An opened latent cache: `moments[tile, rotation]` and the latents' overall scale."""

    folder: Path
    moments: np.ndarray
    kind: str
    std: float

    @property
    def latent_channels(self) -> int:
        return self.moments.shape[2] // 2 if self.kind == "kl-autoencoder" else self.moments.shape[2]


def latent_cache(
    autoencoder: AutoencoderKL | VQModel,
    autoencoder_folder: str | Path,
    kind: str,
    pool: TrainingPool,
    size: int,
    accelerator: Accelerator,
    *,
    batch_size: int = ENCODE_TILES,
    workers: int = 0,
    progress: bool | None = None,
) -> LatentCache:
    """Open the cache for (autoencoder, pool, size), building it first if missing.

    Every process encodes its own contiguous share of the tiles into the one memory map (the
    cache folder must be on a disk all processes see), so N GPUs build it N times faster and no
    process waits alone at a barrier for the whole pool; the statistics are summed over the
    processes, and the main process seals the folder. The main process alone decides whether to
    build (a cache sealed by another run between two processes' looks would otherwise send one
    process to build and the other to train, each waiting on the other for ever), and a failure
    in any process's share is summed with the statistics, so that every process raises it
    instead of waiting at the sum for the one that died.

    Args:
        autoencoder: the frozen model, on `accelerator.device`.
        autoencoder_folder: its folder (its weights' hash keys the cache).
        kind: `kl-autoencoder` or `vq-autoencoder`.
        pool: the training pool.
        size: tiles are resized to size x size before encoding.
        accelerator: the run's processes; every one of them must call this.
        batch_size: tiles per encoder pass (each in its 4 rotations, so 4x as many images).
        workers: DataLoader processes that decode the tiles.
        progress: show a bar while building (the main process's share).
    """
    # bf16 where the run trains in bf16 on a GPU (the encoder twice as fast), float32 otherwise;
    # the key holds it, so a cache encoded in one precision never stands in for the other
    encode_bf16 = accelerator.device.type == "cuda" and accelerator.mixed_precision == "bf16"
    key_text = json.dumps(
        {
            "version": CACHE_VERSION,
            "autoencoder": model_hash(autoencoder_folder),
            "pool": pool.fingerprint,
            "size": size,
            "encoded_in": "bf16" if encode_bf16 else "fp32",
        },
        sort_keys=True,
    )
    key = hashlib.sha256(key_text.encode()).hexdigest()[:32]
    folder = cache_dir() / "latents" / key
    if broadcast_object_list([not (folder / "meta.json").is_file()])[0]:
        _build(autoencoder, kind, pool, size, folder, accelerator, batch_size, workers, progress, encode_bf16)
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    moments = np.load(folder / "moments.npy", mmap_mode="r")
    return LatentCache(folder=folder, moments=moments, kind=kind, std=float(meta["std"]))


class _TileRotations(torch.utils.data.Dataset):
    """A pool's tiles in their 4 quarter turns, (4, 3, size, size) in [-1, 1], decoded in workers."""

    def __init__(self, files: list[Path], size: int) -> None:
        self.files = files
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        tile = load_rgb(self.files[index], size=self.size)
        return torch.stack([to_model_input(np.rot90(tile, turns, axes=(0, 1))) for turns in range(4)])


def _build(
    autoencoder: AutoencoderKL | VQModel,
    kind: str,
    pool: TrainingPool,
    size: int,
    folder: Path,
    accelerator: Accelerator,
    batch_size: int,
    workers: int,
    progress: bool | None,
    bf16: bool,
) -> None:
    """Encode the pool into `folder`, each process its share, the main one sealing the result."""
    device, main = accelerator.device, accelerator.is_main_process
    n = len(pool.files)
    with torch.no_grad():
        shape = (n, 4, *_encode(autoencoder, kind, torch.zeros(1, 3, size, size, device=device)).shape[1:])
    named = [None]
    if main:  # a folder of its own, so that two runs building the same cache do not collide
        folder.parent.mkdir(parents=True, exist_ok=True)
        named = [tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent)]
        created = np.lib.format.open_memmap(Path(named[0]) / "moments.npy", "w+", np.float32, shape)
        del created  # the header and the file's full length are written; every process fills its rows
    partial = Path(broadcast_object_list(named)[0])
    share = -(-n // accelerator.num_processes)
    first, stop = accelerator.process_index * share, min(n, (accelerator.process_index + 1) * share)
    shown = progress if main else False
    failure: Exception | None = None
    try:
        try:
            sums = _encode_share(
                autoencoder,
                kind,
                pool.files,
                size,
                partial,
                range(first, stop),
                batch_size,
                workers,
                device,
                shown,
                bf16,
            )
        except Exception as error:  # summed below as a failure, raised here after the sum
            failure, sums = error, [0.0, 0.0, 0.0]
        summed = torch.tensor([*sums, float(failure is not None)], dtype=torch.float64, device=device)
        total, squares, count, failures = accelerator.reduce(summed, "sum").tolist()
        if failure is not None:
            raise failure
        if failures:
            raise HistosynthError(f"latent cache {folder}: {int(failures)} other process(es) failed")
        if main:
            variance = squares / count - (total / count) ** 2
            meta = {"kind": kind, "size": size, "tiles": n, "std": variance**0.5}
            atomic_write_text(partial / "meta.json", json.dumps(meta, indent=2) + "\n")
            fsync_folder(partial)
            if not folder.exists():  # else another run finished first: keep its copy
                os.replace(partial, folder)
                fsync_folder(folder.parent)
    finally:
        if main:
            shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()


def _encode_share(
    autoencoder: AutoencoderKL | VQModel,
    kind: str,
    files: list[Path],
    size: int,
    partial: Path,
    tiles: range,
    batch_size: int,
    workers: int,
    device: torch.device,
    progress: bool | None,
    bf16: bool,
) -> list[float]:
    """Encode `tiles` (4 rotations each) into the partial memory map; the share's sums of the
    latents, of their squares (plus the KL posterior's variance) and the count, for the std."""
    moments = np.load(partial / "moments.npy", mmap_mode="r+")
    loader = torch.utils.data.DataLoader(
        _TileRotations([files[index] for index in tiles], size),
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    total, squares, count = 0.0, 0.0, 0
    # the moments are stored in float32 either way
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    start = tiles.start
    with progress_bar(progress) as bar, torch.no_grad(), autocast:
        task = bar.add_task("encode latents (4 rotations)", total=len(tiles))
        for batch in loader:
            rows = batch.shape[0]
            encoded = _encode(autoencoder, kind, batch.flatten(0, 1).to(device, non_blocking=True))
            encoded = encoded.cpu().numpy().reshape(rows, 4, *encoded.shape[1:])
            moments[start : start + rows] = encoded
            mean, spread = _mean_and_spread(encoded.reshape(-1, *encoded.shape[2:]), kind)
            total += float(mean.sum(dtype=np.float64))
            squares += float((mean.astype(np.float64) ** 2 + spread.astype(np.float64) ** 2).sum())
            count += mean.size
            start += rows
            bar.advance(task, rows)
    moments.flush()
    return [total, squares, float(count)]


def _encode(autoencoder: AutoencoderKL | VQModel, kind: str, images: torch.Tensor) -> torch.Tensor:
    """KL: the posterior's mean and std stacked on channels; VQ: the pre-quantisation latents."""
    if kind == "kl-autoencoder":
        posterior = autoencoder.encode(images).latent_dist
        return torch.cat([posterior.mean, posterior.std], dim=1).float()
    return autoencoder.encode(images).latents.float()


def _mean_and_spread(encoded: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    if kind == "kl-autoencoder":
        half = encoded.shape[1] // 2
        return encoded[:, :half], encoded[:, half:]
    return encoded, np.zeros_like(encoded)


class LatentDataset(torch.utils.data.Dataset):
    """Cached encodings indexed by (epoch, index): the seeded rotation of the tile, and its label."""

    def __init__(self, cache: LatentCache, labels: list[int], seed: int) -> None:
        self.cache = cache
        self.labels = labels
        self.seed = seed

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, index = key
        moments = np.array(self.cache.moments[index, rotation(self.seed, epoch, index)])
        return torch.from_numpy(moments), self.labels[index]


def sample_latents(moments: torch.Tensor, posterior: torch.Tensor | None) -> torch.Tensor:
    """Latents from cached moments: `mean + std * posterior` for KL (CompVis samples the posterior,
    `posterior` ~ N(0, 1) of the latents' shape); VQ latents (`posterior` None) as they are."""
    if posterior is None:
        return moments
    mean, std = moments.chunk(2, dim=1)
    return mean + std * posterior.to(mean.dtype)
