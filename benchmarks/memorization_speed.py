"""Throughput of the memorization audit against a bare float32 GEMM of the same shapes.

The audit's work is one matrix product: (queries x transforms) x pixels times pixels x
training tiles, 2 * Q * T * P * N FLOPs (the paper: 200 tiles per class x 4 rotations x
65,536 pixels x 100,000 training tiles in all = 1.05e13). This script builds a synthetic
training class of 224x224 TIFF tiles (like NCT-CRC-HE-100K; by default 11,111 tiles, one
class of the paper's 9 at its scale, so the paper's run is 9 of these) and a pool of
generated tiles, then times, in the same run:

* bare GEMM: one product of random float32 matrices of the audit's shapes, with the whole
  training matrix already in memory as float32 (what the audit avoids needing): `np.matmul`
  for the numpy path, `torch.matmul` on the device for the torch paths;
* cold: `audit_memorization` with an empty cache (decoding and upscaling every training tile);
* warm: the same call again, reading the uint8 cache (end to end: listing the pools,
  sampling, decoding the query tiles, the search and the statistics), once per device
  (`numpy`, torch on `cpu`, and `cuda` when torch sees a GPU).

Bare GEMM and warm audit alternate `--repeats` times per device, so that other load on a
shared machine hits both alike; it prints each device's ratio (best of each, and the range
of the per-repeat ratios), the achieved FLOP rate, the largest difference of r between each
torch device and the numpy path, the accuracy of r against float64, and a projection to the
paper's scale on this machine.

Usage: python benchmarks/memorization_speed.py [--train-tiles 11111] [--queries 200] [--flips]
    [--devices numpy,cpu,cuda]
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
import torch
from PIL import Image

from evaluator.memorization.audit import MemorizationSettings, audit_memorization
from evaluator.memorization.cache import load_gray
from evaluator.memorization.search import apply_transform

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
    """A float32 product (rows x pixels) @ (pixels x train) with both operands already in memory
    (RAM for numpy and torch's cpu, the device's memory otherwise)."""

    def __init__(self, rows: int, pixels: int, train: int, device: str) -> None:
        rng = np.random.default_rng(0)
        self.left = rng.random((rows, pixels), dtype=np.float32)
        self.right = rng.random((train, pixels), dtype=np.float32)
        self.device = device
        if device != "numpy":
            self.left, self.right = (torch.from_numpy(a).to(device) for a in (self.left, self.right))

    def run(self) -> None:
        if self.device == "numpy":
            np.matmul(self.left, self.right.T)
            return
        torch.matmul(self.left, self.right.T)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()


def timed(function: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process over all its threads) of one call.

    CPU time is far less sensitive than wall time to other jobs on a shared machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def max_error_vs_float64(
    result_tiles: pd.DataFrame, train_paths: list[Path], size: int, transforms: int, checked: int = 5
) -> float:
    """Largest |r - r64| over a few queries, r64 the float64 best correlation over all
    training tiles and the audit's transforms (training tiles decoded again, in blocks)."""
    rows = result_tiles.head(checked)
    variants = []
    for path in rows["tile"]:
        gray = load_gray(path, size).astype(np.float64)
        for k in range(transforms):
            vector = apply_transform(gray, k).ravel().copy()
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
    exact = best.reshape(len(rows), transforms).max(axis=1)
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
        "--devices",
        default="numpy,cpu" + (",cuda" if torch.cuda.is_available() else ""),
        help="Comma-separated search devices (default: numpy, cpu and cuda when available).",
    )
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

    def audit(device: str):
        settings = MemorizationSettings(**options, device=device)
        return audit_memorization(workdir / "train", pools, None, settings)

    transforms = 8 if args.flips else 4
    pixels = args.size * args.size
    rows = args.pools * args.queries * transforms
    flops = 2.0 * rows * pixels * args.train_tiles
    devices = args.devices.split(",")
    cold, _ = timed(lambda: audit(devices[0]))
    results, lines, rates = {}, [], {}
    for device in devices:
        bare = BareGemm(rows, pixels, args.train_tiles, device)
        bare.run()  # warms the device (CUDA context, cuBLAS handles)
        audit(device)
        gemm = gemm_cpu = warm = warm_cpu = np.inf
        ratios = []
        for _ in range(args.repeats):
            wall_gemm, cpu_gemm = timed(bare.run)
            wall_audit, cpu_audit = timed(lambda device=device: audit(device))
            ratios.append(wall_audit / wall_gemm)
            gemm, gemm_cpu = min(gemm, wall_gemm), min(gemm_cpu, cpu_gemm)
            warm, warm_cpu = min(warm, wall_audit), min(warm_cpu, cpu_audit)
        del bare
        results[device] = audit(device).tiles
        rates[device] = (flops / gemm, flops / warm)
        lines.append(
            f"{device:>6}: bare GEMM {gemm:7.2f} s ({flops / gemm / 1e9:7.1f} GFLOP/s), "
            f"warm audit {warm:7.2f} s"
            f"  ratio {warm / gemm:.2f}x (per repeat {min(ratios):.2f}-{max(ratios):.2f}x)"
            + (f"; CPU time ratio {warm_cpu / gemm_cpu:.2f}x" if device in ("numpy", "cpu") else "")
        )
    start = time.perf_counter()
    queries = [load_gray(p, args.size) for p in sorted((workdir / "gen0" / "A").iterdir())]
    query_decode = time.perf_counter() - start
    reference = results[devices[0]]
    error = max_error_vs_float64(reference, train_paths, args.size, transforms)

    decode_rate = args.train_tiles / max(cold, 1e-9)
    print(f"machine: {os.cpu_count()} CPUs; shapes: ({rows} x {pixels}) @ ({pixels} x {args.train_tiles})")
    print(f"FLOPs per run:          {flops:.3e}")
    print("\n".join(lines))
    for device in devices[1:]:
        difference = np.abs(results[device]["r"].to_numpy() - reference["r"].to_numpy()).max()
        same = (results[device]["train_tile"] == reference["train_tile"]).mean()
        print(
            f"max |r_{device} - r_{devices[0]}| = {difference:.2e}; "
            f"same training tile for {same:.1%} of tiles"
        )
    print(f"audit, cold cache:      {cold:8.2f} s  ({decode_rate:.0f} training tiles/s, search included)")
    print(f"query decode alone:     {query_decode:8.2f} s for {len(queries)} tiles (1 thread)")
    print(f"max |r - r_float64| over 5 queries: {error:.2e}")
    for device, (gemm_rate, audit_rate) in rates.items():
        print(
            f"projection, paper scale (9 classes x 200 tiles x 4 rotations vs 100,000 training tiles, "
            f"{PAPER_FLOPS:.2e} FLOPs per source) on {device}: bare GEMM {PAPER_FLOPS / gemm_rate:.0f} s, "
            f"audit warm {PAPER_FLOPS / audit_rate:.0f} s"
        )
    print(f"one-time cache build at paper scale: {100_000 / decode_rate / 60:.1f} min")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
