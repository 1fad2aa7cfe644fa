"""Cut the demo's real tiles from the OpenSlide sample and save them as one JPEG sheet.

Run once by a developer: `python scripts/cut_demo_tiles.py ../shared/data/cmu_small_region.svs`.
The sheet ships inside `rater_app/demo_tiles/` so `histosynth demo` needs no download; it holds
224 x 224 crops at the scan's native 20x (about 0.5 um/px, the resolution of NCT-CRC-HE-100K):
tissue crops first, then background crops, row by row.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

TILE = 224
TISSUE_TILES = 40
BACKGROUND_TILES = 8
COLUMNS = 8


def tissue_fraction(tile: np.ndarray) -> float:
    """Fraction of pixels that are stained (not near-white glass)."""
    return float((tile.astype(np.int16).min(axis=2) < 200).mean())


def main(svs: Path, out: Path) -> None:
    region = np.asarray(Image.open(svs).convert("RGB"))
    rows, cols = region.shape[0] // TILE, region.shape[1] // TILE
    tiles = [
        region[r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE] for r in range(rows) for c in range(cols)
    ]
    fractions = np.array([tissue_fraction(t) for t in tiles])
    tissue = [tiles[i] for i in np.argsort(-fractions)[:TISSUE_TILES]]
    background = [tiles[i] for i in np.argsort(fractions)[:BACKGROUND_TILES]]
    chosen = tissue + background
    sheet = np.zeros((len(chosen) // COLUMNS * TILE, COLUMNS * TILE, 3), np.uint8)
    for index, tile in enumerate(chosen):
        r, c = divmod(index, COLUMNS)
        sheet[r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE] = tile
    Image.fromarray(sheet).save(out, quality=92, subsampling=0)
    print(f"{out}: {len(tissue)} tissue + {len(background)} background tiles")


if __name__ == "__main__":
    main(
        Path(sys.argv[1]), Path(__file__).resolve().parents[1] / "rater_app" / "demo_tiles" / "cmu_tiles.jpg"
    )
