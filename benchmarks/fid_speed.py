"""Speed of `histosynth evaluate fid`'s parts, each against its baseline in the same run.

1. Frechet distance at 2048 dimensions: `evaluator.pools.fid.frechet_distance` (Cholesky and a
   symmetric eigenvalue problem) against clean-fid's `frechet_distance` (scipy.linalg.sqrtm), on the
   same covariances; prints both values and their relative difference.
2. A whole FID run on a small synthetic pool pair with a cold feature cache against the same
   run with a warm one.
3. Images per second of feature extraction on this machine: the clean resize alone, and
   resize plus Inception-v3. The real TorchScript weights are used when they sit in the cache
   (`<cache>/weights/inception-2015-12-05.pt`); otherwise torchvision's Inception-v3 with
   random weights stands in, which has the same architecture and cost.

Run: .venv/bin/python benchmarks/fid_speed.py [--images 32] [--dim 2048] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def bench_frechet(dim: int, repeats: int) -> None:
    """Interleaved repeats, best of each: the machine may be shared, and the minimum is the cost."""
    from cleanfid.fid import frechet_distance as sqrtm_frechet_distance

    from evaluator.pools.fid import frechet_distance

    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim) + np.eye(dim)
    a = rng.normal(size=(2 * dim, dim)) @ mixing
    b = rng.normal(size=(2 * dim, dim)) @ mixing * 1.1 + 0.05
    mu1, sigma1 = a.mean(axis=0), np.cov(a, rowvar=False)
    mu2, sigma2 = b.mean(axis=0), np.cov(b, rowvar=False)
    ours_times, theirs_times = [], []
    for _ in range(repeats):
        ours, seconds = timed(frechet_distance, mu1, sigma1, mu2, sigma2)
        ours_times.append(seconds)
        theirs, seconds = timed(sqrtm_frechet_distance, mu1, sigma1, mu2, sigma2)
        theirs_times.append(seconds)
    ours_s, theirs_s = min(ours_times), min(theirs_times)
    print(
        f"[frechet d={dim}, best of {repeats}] ours (Cholesky + eigvalsh, float64): {ours_s:.2f} s  "
        f"scipy sqrtm (clean-fid): {theirs_s:.2f} s  speed-up {theirs_s / ours_s:.1f}x  "
        f"values {ours:.6f} vs {theirs:.6f} (rel diff {abs(ours - theirs) / abs(theirs):.1e})"
    )


def inception_extractor():
    from evaluator.pools.features import Extractor, ExtractorError, load_extractor

    try:
        return load_extractor("inception", device="cpu"), "TorchScript Inception-v3 (real weights)"
    except ExtractorError:
        from torchvision.models import inception_v3

        torch.manual_seed(0)
        model = inception_v3(weights=None, aux_logits=False, init_weights=False, transform_input=False)
        model.fc = torch.nn.Identity()
        model.eval()
        extractor = Extractor("standin", "torchvision-inception-v3-random-seed0", model, torch.device("cpu"))
        return extractor, "torchvision Inception-v3, random weights (same cost; real weights not in cache)"


def make_pool(root: Path, classes: tuple[str, ...], count: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True)
        for index in range(count):
            coarse = rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
            tile = Image.fromarray(coarse).resize((224, 224), Image.Resampling.BICUBIC)
            tile.save(root / name / f"{index:04d}.png")
    return root


def bench_pipeline(images: int) -> None:
    from evaluator.pools.features import compute_features
    from evaluator.pools.fid import FidSettings, compute_fid

    extractor, label = inception_extractor()
    print(f"[extractor] {label}; torch threads: {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        os.environ["HISTOSYNTH_CACHE_DIR"] = str(folder / "cache")
        classes = ("ADI", "TUM")
        reference = make_pool(folder / "reference", classes, images, seed=1)
        generated = make_pool(folder / "generated", classes, images, seed=2)
        files = sorted((reference / "ADI").iterdir())

        class ResizeOnly:
            def __call__(self, batch):
                return batch.mean(dim=(2, 3))

        from evaluator.pools.features import Extractor

        resize_only = Extractor("resize", "resize", ResizeOnly(), torch.device("cpu"))
        for workers in (0, 2):
            _, seconds = timed(compute_features, files, resize_only, cache=False, workers=workers)
            print(f"[extract] clean resize only, {workers} threads: {len(files) / seconds:.1f} images/s")
        _, seconds = timed(compute_features, files, extractor, cache=False, workers=2)
        print(f"[extract] resize + Inception-v3, batch 32, 2 threads: {len(files) / seconds:.1f} images/s")

        run = FidSettings(extractor=extractor, workers=2, kid_subsets=100, n_bootstrap=20)
        cold, cold_s = timed(compute_fid, reference, {"generated": generated}, run)
        warm, warm_s = timed(compute_fid, reference, {"generated": generated}, run)
        assert np.allclose(cold.table["fid"], warm.table["fid"])
        total = 2 * len(classes) * images
        print(
            f"[fid run] {total} images, 2 classes: cold cache {cold_s:.2f} s, warm cache {warm_s:.2f} s, "
            f"speed-up {cold_s / warm_s:.1f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="images per class and pool")
    parser.add_argument("--dim", type=int, default=2048, help="feature dimensions for the Frechet benchmark")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of each Frechet implementation")
    args = parser.parse_args()
    bench_frechet(args.dim, args.repeats)
    bench_pipeline(args.images)


if __name__ == "__main__":
    main()
