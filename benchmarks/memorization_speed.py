"""Throughput of the memorization audit against a bare float32 GEMM of the same shapes.

The audit's work is one matrix product: (queries x transforms) x pixels times pixels x
training tiles, 2 * Q * T * P * N FLOPs (the paper: 200 tiles per class x 4 rotations x
65,536 pixels x 100,000 training tiles in all = 1.05e13). This script builds a synthetic
training class of 224x224 TIFF tiles (like NCT-CRC-HE-100K; by default 11,111 tiles, one
class of the paper's 9 at its scale, so the paper's run is 9 of these) and a pool of
generated tiles, then times, in the same run:

* bare GEMM: `np.matmul` of random float32 matrices of the audit's shapes, with the whole
  training matrix already in RAM as float32 (what the audit avoids needing);
* cold: `audit_memorization` with an empty cache (decoding and upscaling every training tile);
* warm: the same call again, reading the uint8 cache (end to end: listing the pools,
  sampling, decoding the query tiles, the search and the statistics).

It prints the ratios, the achieved FLOP rate, the accuracy of r against float64, and a
projection to the paper's scale on this machine.

Usage: python benchmarks/memorization_speed.py [--train-tiles 11111] [--queries 200] [--flips]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from evaluator.memorization.audit import MemorizationSettings, audit_memorization
from evaluator.memorization.cache import load_gray

PAPER_FLOPS = 2 * 800 * 65_536 * 100_000


def write_tiles(folder: Path, count: int, seed: int, side: int = 224) -> list[Path]:
    """Smooth random RGB tiles saved as uncompressed TIFF (the NCT-CRC-HE-100K format);
    tiles already in `folder` (from an earlier run with the same --workdir) are kept."""
    folder.mkdir(parents=True, exist_ok=True)

    def one(index: int) -> Path:
        rng = np.random.default_rng([seed, index])
        coarse = Image.fromarray((rng.random((28, 28, 3)) * 255).astype(np.uint8))
        path = folder / f"tile{index:06d}.tif"
        if path.exists():
            return path
        coarse.resize((side, side), Image.Resampling.BICUBIC).save(path)
        return path

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        return list(pool.map(one, range(count)))


class BareGemm:
    """A float32 product (rows x pixels) @ (pixels x train) with both operands already in RAM."""

    def __init__(self, rows: int, pixels: int, train: int) -> None:
        rng = np.random.default_rng(0)
        self.left = rng.random((rows, pixels), dtype=np.float32)
        self.right = rng.random((train, pixels), dtype=np.float32)

    def run(self) -> None:
        np.matmul(self.left, self.right.T)


def timed(function: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process over all its threads) of one call.

    CPU time is far less sensitive than wall time to other jobs on a shared machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def max_error_vs_float64(
    result_tiles: pd.DataFrame, train_paths: list[Path], size: int, checked: int = 5
) -> float:
    """Largest |r - r64| over a few queries, r64 the float64 best correlation over all
    training tiles and the 4 rotations (training tiles decoded again, in blocks)."""
    rows = result_tiles.head(checked)
    variants = []
    for path in rows["tile"]:
        gray = load_gray(path, size).astype(np.float64)
        for k in range(4):
            vector = np.rot90(gray, k).ravel()
            vector -= vector.mean()
            variants.append(vector / np.linalg.norm(vector))
    variants = np.stack(variants)
    best = np.full(len(variants), -1.0)
    for start in range(0, len(train_paths), 500):
        train = np.stack([load_gray(p, size).ravel() for p in train_paths[start : start + 500]]).astype(
            np.float64
        )
        train -= train.mean(axis=1, keepdims=True)
        train /= np.linalg.norm(train, axis=1, keepdims=True)
        best = np.maximum(best, (variants @ train.T).max(axis=1))
    exact = best.reshape(len(rows), 4).max(axis=1)
    return float(np.abs(exact - rows["r"].to_numpy()).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-tiles", type=int, default=11_111, help="Default: one class at paper scale.")
    parser.add_argument("--queries", type=int, default=200, help="Tiles per generated pool.")
    parser.add_argument("--pools", type=int, default=1, help="Generated pools searched together.")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--flips", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="Folder for tiles and cache (default: tmp)."
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="memorization-bench-"))
    train_paths = write_tiles(workdir / "train" / "A", args.train_tiles, seed=1)
    pools = {f"gen{i}": workdir / f"gen{i}" for i in range(args.pools)}
    for i, folder in enumerate(pools.values()):
        write_tiles(folder / "A", args.queries, seed=2 + i)
    cache_dir = workdir / "cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    options = {"n": args.queries, "size": args.size, "flips": args.flips, "cache_dir": cache_dir}

    transforms = 8 if args.flips else 4
    pixels = args.size * args.size
    rows = args.pools * args.queries * transforms
    flops = 2.0 * rows * pixels * args.train_tiles
    bare = BareGemm(rows, pixels, args.train_tiles)
    gemm, gemm_cpu = timed(bare.run)
    cold, _ = timed(
        lambda: audit_memorization(workdir / "train", pools, None, MemorizationSettings(**options))
    )
    # Interleaved, best of each: other load on a shared machine hits both alike.
    warm = warm_cpu = np.inf
    for _ in range(args.repeats):
        wall, cpu = timed(bare.run)
        gemm, gemm_cpu = min(gemm, wall), min(gemm_cpu, cpu)
        wall, cpu = timed(
            lambda: audit_memorization(workdir / "train", pools, None, MemorizationSettings(**options))
        )
        warm, warm_cpu = min(warm, wall), min(warm_cpu, cpu)
    del bare
    result = audit_memorization(workdir / "train", pools, None, MemorizationSettings(**options))
    start = time.perf_counter()
    queries = [load_gray(p, args.size) for p in sorted((workdir / "gen0" / "A").iterdir())]
    query_decode = time.perf_counter() - start
    error = max_error_vs_float64(result.tiles, train_paths, args.size) if not args.flips else float("nan")

    decode_rate = args.train_tiles / max(cold - warm, 1e-9)
    rate = flops / warm
    print(f"machine: {os.cpu_count()} CPUs; shapes: ({rows} x {pixels}) @ ({pixels} x {args.train_tiles})")
    print(f"FLOPs per run:          {flops:.3e}")
    print(f"bare float32 GEMM:      {gemm:8.2f} s  ({flops / gemm / 1e9:6.1f} GFLOP/s)")
    print(f"audit, warm cache:      {warm:8.2f} s  ({rate / 1e9:6.1f} GFLOP/s)  ratio {warm / gemm:.2f}x")
    print(f"CPU time, GEMM / audit: {gemm_cpu:8.2f} s / {warm_cpu:.2f} s  ratio {warm_cpu / gemm_cpu:.2f}x")
    print(
        f"audit, cold cache:      {cold:8.2f} s  ratio {cold / gemm:.2f}x  "
        f"({decode_rate:.0f} training tiles/s)"
    )
    print(f"query decode alone:     {query_decode:8.2f} s for {len(queries)} tiles (1 thread)")
    print(f"max |r - r_float64| over 5 queries: {error:.2e}")
    print(
        f"projection, paper scale (9 classes x 200 tiles x 4 rotations vs 100,000 training tiles, "
        f"{PAPER_FLOPS:.2e} FLOPs per source): bare GEMM {PAPER_FLOPS / (flops / gemm):.0f} s, "
        f"audit warm {PAPER_FLOPS / rate:.0f} s (from this run's rate; exact when the run is one class "
        f"of 11,111 tiles and one pool); one-time cache build {100_000 / decode_rate / 60:.1f} min"
    )
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
