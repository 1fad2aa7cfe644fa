"""Fixtures and pools shared by the pool-metric tests (features, FID, t-SNE, MS-SSIM)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own feature cache, so no test reads what another one extracted."""
    monkeypatch.setenv("HISTOSYNTH_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def brightness_pool(
    root: Path, means: dict[str, float], count: int, seed: int, *, side: int = 32, spread: float = 40.0
) -> Path:
    """A pool of noisy PNG tiles (`<root>/<CLASS>/<CLASS>-NNN.png`) whose brightness differs per class.

    Args:
        root: the pool folder to create.
        means: class name -> mean pixel value of its tiles.
        count: tiles per class.
        seed: seeds the noise.
        side: tile side in pixels.
        spread: standard deviation of the pixel noise.
    """
    rng = np.random.default_rng(seed)
    for name, mean in means.items():
        (root / name).mkdir(parents=True)
        for index in range(count):
            pixels = np.clip(rng.normal(mean, spread, (side, side, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}-{index:03d}.png")
    return root
