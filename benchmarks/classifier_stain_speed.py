"""Throughput of the classifier's stain preparation: cold (Macenko) against warm (the tile cache).

`trainer.classifier.stain.prepare_tiles` normalises each tile once and caches it; every later arm, seed or
run reads the cache. This script cuts 224 x 224 tiles from the real H&E slide in ../shared/data
(or makes smooth random ones where it is absent), then times, in the same run and on the same
files:

* resize only: `prepare_tiles(..., normalizer=None)` with an empty cache (decode + resize + save),
  the baseline without Macenko;
* cold: `prepare_tiles` with the default reference and an empty cache (decode, Macenko, resize,
  save), with 1 thread and with `--workers` threads;
* warm: the same call again, reading the cache.

It prints tiles per second and the ratios, and projects the cold pass to NCT-CRC-HE-100K's
100,000 tiles plus CRC-VAL-HE-7K's 7,180.

Usage: python benchmarks/classifier_stain_speed.py [--tiles 400] [--workers 2] [--size 224]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from trainer.classifier.stain import fit_normalizer, prepare_tiles

SLIDE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cmu_small_region.svs"
PAPER_TILES = 100_000 + 7_180


def write_tiles(folder: Path, count: int) -> list[Path]:
    """`count` 224 px PNG tiles cut from the slide in reading order (wrapping), or random ones."""
    if SLIDE.is_file():
        with Image.open(SLIDE) as image:
            region = np.asarray(image.convert("RGB"))
    else:
        base = np.random.default_rng(0).integers(0, 255, (280, 280, 3), dtype=np.uint8)
        region = np.asarray(Image.fromarray(base).resize((2240, 2240), Image.Resampling.BILINEAR))
    per_row, rows = region.shape[1] // 224, region.shape[0] // 224
    paths = []
    for index in range(count):
        row, col = divmod(index % (per_row * rows), per_row)
        path = folder / f"tile-{index:05d}.png"
        Image.fromarray(region[row * 224 : (row + 1) * 224, col * 224 : (col + 1) * 224]).save(path)
        paths.append(path)
    return paths


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=400)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    normalizer = fit_normalizer()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / "tiles").mkdir()
        files = write_tiles(root / "tiles", args.tiles)
        resize = timed(lambda: prepare_tiles(files, None, args.size, cache=root / "c0", progress=False))
        cold_one = timed(
            lambda: prepare_tiles(files, normalizer, args.size, cache=root / "c1", progress=False)
        )
        cold = timed(
            lambda: prepare_tiles(
                files, normalizer, args.size, workers=args.workers, cache=root / "c2", progress=False
            )
        )
        warm = timed(lambda: prepare_tiles(files, normalizer, args.size, cache=root / "c2", progress=False))
        passed = len(
            prepare_tiles(files, normalizer, args.size, cache=root / "c2", progress=False).passed_through
        )
    rate = args.tiles / cold
    source = "real slide" if SLIDE.is_file() else "random"
    print(f"tiles: {args.tiles} at {args.size} px ({source}), passed through: {passed}")
    print(f"resize only      {args.tiles / resize:8.1f} tiles/s")
    print(
        f"cold, 1 thread   {args.tiles / cold_one:8.1f} tiles/s   {cold_one / resize:5.2f}x resize-only time"
    )
    print(f"cold, {args.workers} threads  {rate:8.1f} tiles/s   {cold_one / cold:5.2f}x faster than 1 thread")
    print(f"warm (cache)     {args.tiles / warm:8.1f} tiles/s   {cold / warm:5.2f}x faster than cold")
    print(f"projection: {PAPER_TILES} tiles cold in {PAPER_TILES / rate / 3600:.2f} h on this machine")


if __name__ == "__main__":
    main()
