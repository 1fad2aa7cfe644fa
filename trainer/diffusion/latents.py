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
from diffusers import AutoencoderKL, VQModel

from histosynth.cache import cache_dir
from histosynth.files import atomic_write_text, fsync_folder
from histosynth.images import load_rgb
from histosynth.progress import progress_bar
from trainer.core.data import TrainingPool, rotation, to_model_input
from trainer.core.model_folder import model_hash, read_model_info

AUTOENCODER_KINDS = {"kl-autoencoder": AutoencoderKL, "vq-autoencoder": VQModel}
CACHE_VERSION = 1


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
    *,
    device: torch.device,
    batch_size: int = 16,
    progress: bool | None = None,
) -> LatentCache:
    """Open the cache for (autoencoder, pool, size), building it first if missing.

    Args:
        autoencoder: the frozen model, on `device`.
        autoencoder_folder: its folder (its weights' hash keys the cache).
        kind: `kl-autoencoder` or `vq-autoencoder`.
        pool: the training pool.
        size: tiles are resized to size x size before encoding.
        device: where to encode.
        batch_size: tiles per encoder pass.
        progress: show a bar while building.
    """
    key_text = json.dumps(
        {
            "version": CACHE_VERSION,
            "autoencoder": model_hash(autoencoder_folder),
            "pool": pool.fingerprint,
            "size": size,
        },
        sort_keys=True,
    )
    key = hashlib.sha256(key_text.encode()).hexdigest()[:32]
    folder = cache_dir() / "latents" / key
    if not (folder / "meta.json").is_file():
        _build(autoencoder, kind, pool, size, folder, device=device, batch_size=batch_size, progress=progress)
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    moments = np.load(folder / "moments.npy", mmap_mode="r")
    return LatentCache(folder=folder, moments=moments, kind=kind, std=float(meta["std"]))


def _build(
    autoencoder: AutoencoderKL | VQModel,
    kind: str,
    pool: TrainingPool,
    size: int,
    folder: Path,
    *,
    device: torch.device,
    batch_size: int,
    progress: bool | None,
) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        moments = None
        total, squares, count = 0.0, 0.0, 0
        with progress_bar(progress) as bar, torch.no_grad():
            task = bar.add_task("encode latents (4 rotations)", total=len(pool.files))
            for start in range(0, len(pool.files), batch_size):
                paths = pool.files[start : start + batch_size]
                tiles = [load_rgb(path, size=size) for path in paths]
                for turns in range(4):
                    batch = torch.stack(
                        [to_model_input(np.rot90(tile, turns, axes=(0, 1))) for tile in tiles]
                    )
                    encoded = _encode(autoencoder, kind, batch.to(device)).cpu().numpy()
                    if moments is None:
                        shape = (len(pool.files), 4, *encoded.shape[1:])
                        moments = np.lib.format.open_memmap(partial / "moments.npy", "w+", np.float32, shape)
                    moments[start : start + len(paths), turns] = encoded
                    mean, spread = _mean_and_spread(encoded, kind)
                    total += float(mean.sum(dtype=np.float64))
                    squares += float((mean.astype(np.float64) ** 2 + spread.astype(np.float64) ** 2).sum())
                    count += mean.size
                bar.advance(task, len(paths))
        moments.flush()
        del moments
        variance = squares / count - (total / count) ** 2
        meta = {"kind": kind, "size": size, "tiles": len(pool.files), "std": variance**0.5}
        atomic_write_text(partial / "meta.json", json.dumps(meta, indent=2) + "\n")
        fsync_folder(partial)
        if folder.exists():  # another process finished first; keep its copy
            shutil.rmtree(partial)
        else:
            os.replace(partial, folder)
            fsync_folder(folder.parent)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


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


def draw_latents(moments: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Latents from cached moments: `mean + std * noise` for KL (CompVis samples the posterior); VQ as is."""
    if kind != "kl-autoencoder":
        return moments
    mean, std = moments.chunk(2, dim=1)
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + std * noise
