"""Fixtures of the trainer tests: small tile pools (real H&E where available) and the CLI.

Tiles are cut from the real H&E slide in ../shared/data when it exists (real stain statistics),
else made as smooth random images; either way they are 28 x 28 px, which the tiny presets
upscale bilinearly to 32 x 32, as the paper upscales 224 to 256.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import histosynth

SLIDE = Path(__file__).resolve().parents[3] / "shared" / "data" / "cmu_small_region.svs"
TILE = 28


def slide_region() -> np.ndarray | None:
    """The slide's base level as RGB, or None where ../shared is absent."""
    if not SLIDE.is_file():
        return None
    with Image.open(SLIDE) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="session")
def tissue() -> np.ndarray:
    """A (H, W, 3) uint8 source of tiles: the real slide, or a smooth random field."""
    region = slide_region()
    if region is not None:
        return region[:896, :896]
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, size=(112, 112, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(base).resize((896, 896), Image.Resampling.BILINEAR))


def write_tiles(
    root: Path,
    tissue: np.ndarray,
    classes: tuple[str, ...] = ("ADI", "TUM"),
    per_class: int = 4,
    size: int = TILE,
) -> Path:
    """A pool of `per_class` crops per class, cut in reading order from `tissue`."""
    index = 0
    for class_name in classes:
        (root / class_name).mkdir(parents=True)
        for item in range(per_class):
            row, col = divmod(index, tissue.shape[1] // size)
            crop = tissue[row * size : (row + 1) * size, col * size : (col + 1) * size]
            Image.fromarray(crop).save(root / class_name / f"{class_name}-{item:02d}.png")
            index += 1
    return root


@pytest.fixture
def make_tiles(tmp_path: Path, tissue: np.ndarray) -> Callable[..., Path]:
    """Factory: make_tiles(name, classes=("ADI", "TUM"), per_class=4, size=28) -> pool folder."""

    def make(
        name: str = "pool", classes: tuple[str, ...] = ("ADI", "TUM"), per_class: int = 4, size: int = TILE
    ):
        return write_tiles(tmp_path / name, tissue, classes, per_class, size)

    return make


@dataclass(frozen=True)
class TinyModels:
    """A tiny KL autoencoder and an LDM trained on it, shared by the tests that only read them."""

    pool: Path
    autoencoder: Path
    ldm: Path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory, tissue: np.ndarray) -> TinyModels:
    from trainer.autoencoder.options import autoencoder_options
    from trainer.autoencoder.train import AutoencoderSettings, train_autoencoder
    from trainer.diffusion.ldm import LDMSettings, train_ldm
    from trainer.diffusion.options import ldm_options

    root = tmp_path_factory.mktemp("tiny-models")
    pool = write_tiles(root / "pool", tissue)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HISTOSYNTH_CACHE_DIR", str(root / "cache"))
        autoencoder = train_autoencoder(
            pool,
            root / "kl",
            AutoencoderSettings(autoencoder_options("kl", "tiny", perceptual=False, max_steps=3)),
        )
        ldm = train_ldm(autoencoder, pool, root / "ldm", LDMSettings(ldm_options("tiny", max_steps=4)))
    return TinyModels(pool=pool, autoencoder=autoencoder, ldm=ldm)


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own histosynth cache and an empty torch hub (no stray weights)."""
    monkeypatch.setenv("HISTOSYNTH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess]:
    """cli(*args) runs `histosynth ARGS` through the console script's `main`, in this process.

    A trainer command started in its own process pays 6-8 s of CPU for torch and diffusers
    before it reads an option; the behaviour the tests read (exit code, output, files) is the
    same here. The tests that need a process of their own (killed, launched on two ranks) start
    one themselves.
    """
    return histosynth
