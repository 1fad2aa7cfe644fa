"""Speed of StyleGAN2 generation (`trainer.stylegan2.sampling.generate_images`), batched against
one image at a time in the same run.

1. CPU, the tiny preset (32 px): images per second with batches of `--batch` against a loop of
   single images; both produce the same images (checked).
2. GPU, when CUDA is present: the paper's generator (256 px, 512-d z and w, 8 mapping layers)
   with random weights (the cost does not depend on the weights), tiles per second at
   `--gpu-batch`, and the time for 10,000 tiles against the paper's "10,000 images in minutes"
   (two RTX A6000). Random weights make the images meaningless, not the timing.

Run: .venv/bin/python benchmarks/stylegan2_speed.py [--images 64] [--batch 32] [--gpu-batch 256]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from histosynth.sampling import derive_seed
from trainer.stylegan2.networks import StyleGAN2Generator, build_networks
from trainer.stylegan2.options import stylegan2_options
from trainer.stylegan2.sampling import generate_images


def seeded(indices: range) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(derive_seed(0, "bench", index)) for index in indices]


def images_per_second(
    generator: StyleGAN2Generator, count: int, batch: int, classes: int
) -> tuple[float, list]:
    """Generate `count` images in batches of `batch`; return images/s and the images."""
    out = []
    start = time.perf_counter()
    for first in range(0, count, batch):
        indices = range(first, min(first + batch, count))
        out.extend(generate_images(generator, [index % classes for index in indices], seeded(indices)))
    if generator.device.type == "cuda":
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start), out


def bench_cpu(images: int, batch: int) -> None:
    torch.manual_seed(0)
    generator, _ = build_networks(stylegan2_options("tiny"), 2)
    generator.eval().requires_grad_(False)
    images_per_second(generator, 8, 8, 2)  # warm-up
    single, one_by_one = images_per_second(generator, images, 1, 2)
    batched, together = images_per_second(generator, images, batch, 2)
    same = all(np.array_equal(a, b) for a, b in zip(one_by_one, together, strict=True))
    print(
        f"[cpu, tiny 32 px, {images} images] one at a time {single:.1f} images/s, batch {batch} "
        f"{batched:.1f} images/s: {batched / single:.1f}x; identical images: {same}"
    )


def bench_gpu(batch: int) -> None:
    if not torch.cuda.is_available():
        print("[gpu] no CUDA device: skipped")
        return
    torch.manual_seed(0)
    generator = StyleGAN2Generator(num_classes=9, resolution=256).cuda().eval().requires_grad_(False)
    images_per_second(generator, batch, batch, 9)  # warm-up (cuDNN autotuning, allocation)
    rate, _ = images_per_second(generator, 4 * batch, batch, 9)
    single, _ = images_per_second(generator, 32, 1, 9)
    print(
        f"[gpu {torch.cuda.get_device_name()}, paper generator 256 px] batch {batch}: {rate:.0f} tiles/s, "
        f"one at a time {single:.1f} tiles/s ({rate / single:.0f}x); 10,000 tiles in {10_000 / rate:.0f} s "
        "(paper: 'minutes' on two RTX A6000)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="images per CPU measurement")
    parser.add_argument("--batch", type=int, default=32, help="CPU batch size")
    parser.add_argument("--gpu-batch", type=int, default=256, help="GPU batch size")
    args = parser.parse_args()
    bench_cpu(args.images, args.batch)
    bench_gpu(args.gpu_batch)


if __name__ == "__main__":
    main()
