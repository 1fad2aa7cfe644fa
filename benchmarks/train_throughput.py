"""The trainer's throughput changes on a CPU, each against its baseline in the same run.

1. EMA: diffusers' `EMAModel.step` over the paper LDM U-Net's parameters (cin-ldm, 395M
   weights in 626 tensors) with `foreach=True` (one fused update per step) against
   `foreach=False` (a loop over the tensors), seconds per step. `train ldm` fuses on a GPU only,
   where the loop pays a kernel launch per tensor; on a CPU the fused form measured slower.
2. Input pipeline: `trainer.core.loop.run_steps` over 224 px PNG tiles, with a step that holds
   the CPU as little as a GPU step does (it waits `--step-ms` for the "device"), with
   `--workers` DataLoader workers (the paper presets' default: the cores, at most 8) against
   none (the tiles decoded between steps, the old default), images per second.
3. StyleGAN2's G phase: the non-saturating loss's forward and backward with D frozen (what
   `train stylegan2` does now: only G's weight gradients are computed) against D trainable (its
   weight gradients computed, then thrown away by D's next `zero_grad`), the paper's networks at
   `--gan-size` px, seconds per phase.
4. Memory layout: a training step (forward and backward) of the paper's KL autoencoder (f = 8,
   `--layout-size` px) in channels_last against the default layout, alternating, seconds per
   step. `trainer.core.loop.memory_format` uses channels_last on a GPU only; this is the CPU
   side of that choice.

Usage: .venv/bin/python benchmarks/train_throughput.py [--tiles 192] [--step-ms 40] [--workers 2]
    [--gan-size 64] [--gan-batch 8] [--layout-size 64]
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


def ema_seconds(foreach: bool, parameters: list[torch.nn.Parameter], steps: int) -> float:
    from diffusers.training_utils import EMAModel

    ema = EMAModel(parameters, decay=0.9999, foreach=foreach)
    ema.step(parameters)  # the first step allocates nothing new, but warms the caches
    cuda = parameters[0].is_cuda
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        ema.step(parameters)
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def bench_ema(repeats: int) -> None:
    from trainer.diffusion.ldm import build_unet
    from trainer.diffusion.options import ldm_options

    options = ldm_options("paper")
    unet = build_unet(options, 4, options.size // 8)
    parameters = list(unet.parameters())
    count = sum(p.numel() for p in parameters)
    fused = min(ema_seconds(True, parameters, 3) for _ in range(repeats))
    looped = min(ema_seconds(False, parameters, 3) for _ in range(repeats))
    print(
        f"[EMA step, paper U-Net: {count / 1e6:.0f}M weights in {len(parameters)} tensors] "
        f"foreach {fused:.3f} s, loop {looped:.3f} s: {looped / fused:.2f}x faster"
    )


def write_pool(folder: Path, tiles: int) -> Path:
    rng = np.random.default_rng(0)
    for name in ("ADI", "TUM"):
        (folder / name).mkdir(parents=True)
        for index in range(tiles // 2):
            coarse = rng.integers(0, 255, size=(28, 28, 3), dtype=np.uint8)
            tile = Image.fromarray(coarse).resize((224, 224), Image.Resampling.BILINEAR)
            tile.save(folder / name / f"{name}-{index:03d}.png")
    return folder


def images_per_second(pool: Path, workers: int, step_ms: float, out: Path) -> float:
    from accelerate import Accelerator

    from trainer.core.data import TileDataset, read_training_pool
    from trainer.core.loop import run_steps
    from trainer.core.options import TrainOptions

    training = read_training_pool(pool, None, progress=False)
    options = TrainOptions(batch_size=16, epochs=2, size=256, num_workers=workers, checkpoint_every=10**6)
    accelerator = Accelerator(cpu=True)

    def step(images: torch.Tensor, labels: torch.Tensor, index: int) -> torch.Tensor:
        time.sleep(step_ms / 1000)  # the host waits for the device, its CPU free
        return images.mean()

    run = {"kind": "benchmark"}
    start = time.perf_counter()
    done = run_steps(
        accelerator, TileDataset(training, 256, 0), options, out=out, start=0, step=step, run=run,
        description="bench", progress=False,
    )  # fmt: skip
    return done * options.batch_size / (time.perf_counter() - start)


def bench_loader(tiles: int, step_ms: float, workers: int, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        pool = write_pool(Path(scratch) / "pool", tiles)
        rates: dict[int, float] = {}
        for count in (0, workers):  # the best of each: the least disturbed by other load
            rates[count] = max(
                images_per_second(pool, count, step_ms, Path(scratch) / f"out{count}-{k}")
                for k in range(repeats)
            )
    print(
        f"[input pipeline, {tiles} PNG tiles of 224 px, batch 16, a {step_ms:.0f} ms device step] "
        f"{workers} workers {rates[workers]:.1f} img/s, none {rates[0]:.1f} img/s: "
        f"{rates[workers] / rates[0]:.2f}x ({os.cpu_count()} CPUs)"
    )


def g_phase_seconds(generator, discriminator, labels: torch.Tensor, frozen: bool, repeats: int) -> float:
    import torch.nn.functional as F

    discriminator.requires_grad_(not frozen)
    times = []
    for _ in range(repeats + 1):  # the first warms the allocator
        generator.zero_grad(set_to_none=True)
        discriminator.zero_grad(set_to_none=True)
        start = time.perf_counter()
        z = torch.randn(labels.shape[0], generator.config.z_dim)
        loss = F.softplus(-discriminator(generator(z, labels), labels)).mean()
        loss.backward()
        times.append(time.perf_counter() - start)
    discriminator.requires_grad_(True)
    return min(times[1:])


def bench_gan_phase(size: int, batch: int, repeats: int) -> None:
    from trainer.stylegan2.networks import build_networks
    from trainer.stylegan2.options import stylegan2_options

    torch.manual_seed(0)
    generator, discriminator = build_networks(stylegan2_options("paper", size=size), 2)
    labels = torch.arange(batch) % 2
    trainable = g_phase_seconds(generator, discriminator, labels, False, repeats)
    frozen = g_phase_seconds(generator, discriminator, labels, True, repeats)
    print(
        f"[StyleGAN2 G phase, paper networks at {size} px, batch {batch}] D frozen {frozen:.3f} s, "
        f"D trainable {trainable:.3f} s: {trainable / frozen:.2f}x faster"
    )


def layout_step_seconds(network, images: torch.Tensor, layout: torch.memory_format) -> float:
    network.to(memory_format=layout)
    images = images.contiguous(memory_format=layout)
    start = time.perf_counter()
    network(images).sample.square().mean().backward()
    return time.perf_counter() - start


def bench_layout(size: int, repeats: int) -> None:
    from trainer.autoencoder.model import build_autoencoder
    from trainer.autoencoder.options import autoencoder_options

    torch.manual_seed(0)
    network = build_autoencoder(autoencoder_options("kl", "paper"))
    images = torch.randn(4, 3, size, size)
    layouts = {"channels_last": torch.channels_last, "default": torch.contiguous_format}
    times: dict[str, list[float]] = {name: [] for name in layouts}
    for _ in range(repeats + 1):  # the first of each warms the allocator
        for name, layout in layouts.items():
            times[name].append(layout_step_seconds(network, images, layout))
    best = {name: min(values[1:]) for name, values in times.items()}
    print(
        f"[memory layout, paper KL autoencoder, batch 4 at {size} px] channels_last "
        f"{best['channels_last']:.3f} s, default {best['default']:.3f} s: "
        f"channels_last is {best['default'] / best['channels_last']:.2f}x the default's speed on a CPU"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=192)
    parser.add_argument("--step-ms", type=float, default=40.0)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--gan-size", type=int, default=64)
    parser.add_argument("--gan-batch", type=int, default=8)
    parser.add_argument("--layout-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    bench_ema(args.repeats)
    bench_loader(args.tiles, args.step_ms, args.workers, args.repeats)
    bench_gan_phase(args.gan_size, args.gan_batch, args.repeats)
    bench_layout(args.layout_size, args.repeats)


if __name__ == "__main__":
    main()
