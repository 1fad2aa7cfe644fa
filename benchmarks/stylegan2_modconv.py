"""StyleGAN2's modulated convolution in training: scaled activations against grouped weights.

`ModulatedConv2d` trains with the styles scaling the activations around one convolution with
the shared weight, and samples with one grouped convolution of per-image weights. This script
times a training step's forward and backward of a generator both ways in the same run
(alternating, best of `--repeats`), and counts the bytes autograd keeps for the backward pass
(`saved_tensors_hooks`, exact on any device), where the grouped form keeps a weight per image:
B x out x in x 3 x 3 per layer, about 600 MB per 512-channel layer at the paper's batch 64.

Run: .venv/bin/python benchmarks/stylegan2_modconv.py [--batch 16] [--size 64] [--channels 128]
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator

import torch

from trainer.stylegan2.networks import ModulatedConv2d, StyleGAN2Generator


@contextlib.contextmanager
def grouped_in_training() -> Iterator[None]:
    """Train with the grouped form (the form before this change), for comparison."""
    scaled = ModulatedConv2d._scaled_activations
    ModulatedConv2d._scaled_activations = ModulatedConv2d._grouped
    try:
        yield
    finally:
        ModulatedConv2d._scaled_activations = scaled


def training_step(generator: StyleGAN2Generator, batch: int) -> int:
    """One forward and backward; returns the bytes autograd saved for the backward pass."""
    saved = 0

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    z, labels = torch.randn(batch, generator.config.z_dim), torch.zeros(batch, dtype=torch.long)
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        images = generator(z, labels)
    images.square().mean().backward()
    return saved


def timed_step(generator: StyleGAN2Generator, batch: int) -> tuple[float, int]:
    start = time.perf_counter()
    saved = training_step(generator, batch)
    return time.perf_counter() - start, saved


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--channels", type=int, default=128, help="channel_max (the paper: 512)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    generator = StyleGAN2Generator(
        num_classes=2,
        resolution=args.size,
        z_dim=64,
        w_dim=64,
        embed_dim=64,
        mapping_layers=2,
        channel_base=args.channels * 32,
        channel_max=args.channels,
    ).train()
    training_step(generator, args.batch)  # warm-up
    times: dict[str, list[float]] = {"scaled": [], "grouped": []}
    saved: dict[str, int] = {}
    for _ in range(args.repeats):
        times["scaled"].append((result := timed_step(generator, args.batch))[0])
        saved["scaled"] = result[1]
        with grouped_in_training():
            times["grouped"].append((result := timed_step(generator, args.batch))[0])
            saved["grouped"] = result[1]
    ratios = [g / s for g, s in zip(times["grouped"], times["scaled"], strict=True)]
    print(
        f"generator {args.size} px, channel_max {args.channels}, batch {args.batch}, training step (fwd+bwd)"
    )
    for form in ("scaled", "grouped"):
        print(
            f"  {form:8s} best {min(times[form]):.3f} s   saved for backward {saved[form] / 2**20:8.1f} MiB"
        )
    print(
        f"  grouped / scaled: time {min(times['grouped']) / min(times['scaled']):.2f}x "
        f"(per repeat {min(ratios):.2f}-{max(ratios):.2f}), memory {saved['grouped'] / saved['scaled']:.2f}x"
    )
    per_layer = 64 * 512 * 512 * 9 * 4 / 2**20
    print(f"  the grouped form's weight of one 512-channel layer at batch 64: {per_layer:.0f} MiB")


if __name__ == "__main__":
    main()
