"""Speed of ADA's composed augmentation (`trainer.stylegan2.augment`) against baselines in the same run.

For a batch of `--batch` images at each of `--sizes` on the CPU, at each p of `--p`, it times:

* composed: `AdaptiveAugment(p=p)` (one bicubic resample and one colour matmul per batch);
* kornia: the module's previous form, the paper's transforms as 12 kornia modules applied one
  after another (each resampling or recolouring the chosen images; hue and saturation through
  HSV), rebuilt here as it was; skipped where kornia is not installed;
* discriminator: the tiny preset's StyleGAN2 discriminator on the same batch, the work the
  augmentation is added to at every call (three per step).

Each is timed forward alone and forward with the backward to the images (as training runs it).
The candidates alternate `--repeats` times, each time the best of two calls, so that other load
on a shared machine hits them alike; it prints the best of each and its ratio to the composed
form's (best against best, and the range of the per-repeat ratios). A last line per size times
the resample alone, bicubic (the module's filter) against bilinear, on the same grid.

Usage: .venv/bin/python benchmarks/ada_speed.py [--batch 32] [--sizes 64,128] [--p 0.2,1.0]
    [--repeats 5]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from trainer.stylegan2.augment import AdaptiveAugment, Draw, draw_geometric, geometric_matrix, sampling_grid
from trainer.stylegan2.networks import StyleGAN2Discriminator
from trainer.stylegan2.options import stylegan2_options

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import best_of  # noqa: E402


class KorniaAugment(nn.Module):
    """The previous `AdaptiveAugment.forward`: kornia's transforms in sequence, each with p."""

    def __init__(self, p: float) -> None:
        import kornia.augmentation as K

        super().__init__()
        scale = math.exp(0.2 * math.log(2.0) * 2)
        reflect = {"padding_mode": "reflection"}
        self.transforms = nn.ModuleList(
            [
                K.RandomHorizontalFlip(p=p),
                K.RandomRotation90(times=(-1.49, 2.49), p=p),
                K.RandomAffine(degrees=0.0, translate=(0.125, 0.125), p=p, **reflect),
                K.RandomAffine(degrees=0.0, scale=(1 / scale, scale), p=p, **reflect),
                K.RandomAffine(degrees=180.0, p=p, **reflect),
                K.RandomAffine(degrees=0.0, scale=(1 / scale, scale, 1 / scale, scale), p=p, **reflect),
                K.RandomAffine(degrees=0.0, translate=(0.125, 0.125), p=p, **reflect),
                K.RandomBrightness(brightness=(0.6, 1.4), clip_output=False, p=p),
                K.RandomContrast(contrast=(0.5, 2.0), clip_output=False, p=p),
            ]
        )
        self.unit_range = nn.ModuleList(
            [K.RandomHue(hue=(-0.5, 0.5), p=p), K.RandomSaturation((0.5, 2.0), p=p)]
        )
        self.p = p

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        for transform in self.transforms:
            images = transform(images)
        chosen = torch.rand(images.shape[0], device=images.device) < self.p  # the luma flip
        images = torch.where(
            chosen[:, None, None, None], images - 2.0 * images.mean(dim=1, keepdim=True), images
        )
        for transform in self.unit_range:
            images = transform((images + 1.0) / 2.0) * 2.0 - 1.0
        return images


def kornia_baseline(p: float) -> nn.Module | None:
    try:
        return KorniaAugment(p)
    except ImportError:
        return None


def calls(module: nn.Module, images: torch.Tensor, labels: torch.Tensor | None) -> dict[str, Callable]:
    """The module's forward alone, and forward with the backward to the images."""
    arguments = (labels,) if labels is not None else ()

    def forward() -> None:
        with torch.no_grad():
            module(images, *arguments)

    def forward_backward() -> None:
        leaf = images.detach().requires_grad_(True)
        module(leaf, *arguments).square().mean().backward()

    return {"forward": forward, "forward+backward": forward_backward}


def alternated(timed: dict[str, Callable], repeats: int) -> dict[str, list[float]]:
    """Seconds per repeat of each call (the best of two), the calls taking turns after a warm-up."""
    for call in timed.values():
        call()
    seconds: dict[str, list[float]] = {name: [] for name in timed}
    for _ in range(repeats):
        for name, call in timed.items():
            seconds[name].append(best_of(call, 2))
    return seconds


def against(seconds: dict[str, list[float]], baseline: str) -> str:
    """Each call's best time and its ratio to the baseline's: best over best, and per repeat."""
    mine = seconds[baseline]
    parts = [f"{baseline} {min(mine) * 1e3:.1f} ms"]
    for name, theirs in seconds.items():
        if name != baseline:
            ratios = [other / own for other, own in zip(theirs, mine, strict=True)]
            parts.append(
                f"{name} {min(theirs) * 1e3:.1f} ms, {min(theirs) / min(mine):.2f}x {baseline}'s "
                f"(per repeat {min(ratios):.2f}-{max(ratios):.2f}x)"
            )
    return "; ".join(parts)


def bench_filters(batch: int, size: int, repeats: int) -> None:
    images = torch.rand(batch, 3, size, size) * 2 - 1
    draw = Draw(batch, images.device, images.dtype, torch.Generator().manual_seed(0))
    grid = sampling_grid(geometric_matrix(draw_geometric(draw, size, size, 1.0)), size, size)
    timed = {
        mode: lambda mode=mode: F.grid_sample(
            images, grid, mode=mode, padding_mode="reflection", align_corners=False
        )
        for mode in ("bicubic", "bilinear")
    }
    print(
        f"[cpu, batch {batch} x {size} px] resample alone: {against(alternated(timed, repeats), 'bicubic')}"
    )


def bench(batch: int, size: int, p: float, repeats: int) -> None:
    torch.manual_seed(0)
    images = torch.rand(batch, 3, size, size) * 2 - 1
    labels = torch.randint(0, 9, (batch,))
    options = stylegan2_options("tiny")
    discriminator = StyleGAN2Discriminator(
        num_classes=9, resolution=size, channel_base=options.channel_base, channel_max=options.channel_max
    ).requires_grad_(False)
    modules = {"composed": AdaptiveAugment(p=p), "kornia": kornia_baseline(p), "discriminator": discriminator}
    modules = {name: module for name, module in modules.items() if module is not None}
    for mode in ("forward", "forward+backward"):
        timed = {
            name: calls(module, images, labels if name == "discriminator" else None)[mode]
            for name, module in modules.items()
        }
        line = against(alternated(timed, repeats), "composed")
        print(f"[cpu, batch {batch} x {size} px, p {p}] {mode}: {line}")
    if "kornia" not in modules:
        print("  kornia is not installed: its baseline skipped")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--sizes", default="64,128", help="comma-separated image sizes")
    parser.add_argument("--p", default="0.2,1.0", help="comma-separated augmentation probabilities")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads")
    for size in map(int, args.sizes.split(",")):
        for p in map(float, args.p.split(",")):
            bench(args.batch, size, p, args.repeats)
        bench_filters(args.batch, size, args.repeats)


if __name__ == "__main__":
    main()
