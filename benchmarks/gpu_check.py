"""The first GPU hour, prepared: one call measures what the paper-scale run needs and writes one JSON.

On a lent GPU (one H100 or H200; about 8 minutes) it measures, each part on its own so that one
failure leaves the others' figures:

1. `sampling`: LDM sampling in seconds per image at the paper's size (KL-f8 at 256 px, the
   cin-ldm U-Net, 200 DDIM steps, bf16) in batches of 16, 64 and 256, and with `torch.compile`
   of the U-Net at batch 64 (each new shape compiles anew, a minute or more), against the
   paper's 0.7 s per image on an RTX A6000 (the goal: at least 14x faster). Untrained models
   built from the preset: random weights cost the same.
2. `training`: each train command (KL autoencoder, LDM, StyleGAN2) as a user runs it, through
   its Python front door on a synthetic pool at the preset's batch: 2 steps, then `--resume`
   for `--train-steps` more on the same device (the resume of every command on CUDA is itself
   a check: a restored EMA left on the CPU fails the first step). The timed part is the resumed
   run's step loop, checkpoints excluded: steps per second, images per second and peak memory.
   LPIPS uses a randomly initialised VGG16 (the real weights are not on the machine; the cost
   is the same).
3. `ema`: the LDM's EMA step fused (`foreach`, used on a GPU) against a loop over the tensors.
4. `memorization`: `evaluate memorization`'s search on the device against a bare float32 GEMM of
   the same shapes (`benchmarks/memorization_speed.py` at a smaller scale).

`--tiny` runs the same code on the tiny presets and a few images, on the CPU when there is no
GPU, in a minute (the suite runs it, so the GPU call cannot fail on a typo).

Usage:
  .venv/bin/python benchmarks/gpu_check.py --out gpu_check.json          # on the GPU
  .venv/bin/python benchmarks/gpu_check.py --tiny --out /tmp/check.json  # anywhere
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate_speed import PAPER_SECONDS_PER_IMAGE, build_ldm_folder, images_per_second  # noqa: E402
from memorization_speed import BareGemm, timed  # noqa: E402
from memorization_speed import write_tiles as write_gray_tiles  # noqa: E402
from train_throughput import ema_seconds  # noqa: E402

GOAL_SPEEDUP = 14.0  # the goal against the paper's 0.7 s per image


@dataclass(frozen=True)
class Scale:
    """How big each part runs: the paper's sizes on a GPU, or `--tiny`."""

    preset: str
    size: int
    sampling_batches: tuple[int, ...]
    compiled_batch: int
    sampling_steps: int
    tiles_per_class: int
    memorization_train: int
    memorization_queries: int


PAPER = Scale("paper", 256, (16, 64, 256), 64, 200, 40, 2000, 200)
TINY = Scale("tiny", 32, (2, 4), 4, 4, 4, 40, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--tiny", action="store_true", help="Tiny presets and a few images (CPU is fine).")
    parser.add_argument("--train-steps", type=int, default=None, help="Steps timed after the resume.")
    parser.add_argument("--no-compile", action="store_true", help="Leave out the torch.compile rows.")
    args = parser.parse_args()
    scale = TINY if args.tiny else PAPER
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    steps = args.train_steps or (2 if args.tiny else 8)
    compile_rows = not args.no_compile and not args.tiny  # inductor on a CPU takes minutes
    report: dict[str, Any] = {"machine": machine(device), "scale": scale.preset}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        folder = Path(scratch)
        os.environ["HISTOSYNTH_CACHE_DIR"] = str(folder / "cache")
        parts: dict[str, Callable[[], Any]] = {
            "sampling": lambda: sampling(scale, device, folder / "untrained-ldm", compile_rows),
            "training": lambda: training(scale, device, folder, steps),
            "ema": lambda: ema(scale, device),
            "memorization": lambda: memorization(scale, device, folder / "memorization"),
        }
        for name, part in parts.items():
            start = time.perf_counter()
            report[name] = recorded(part)
            report[name]["seconds"] = round(time.perf_counter() - start, 1)
            args.out.write_text(json.dumps(report, indent=2) + "\n")  # what is done survives a kill
    print(json.dumps(report, indent=2))


def machine(device: torch.device) -> dict[str, Any]:
    facts = {"device": device.type, "torch": torch.__version__, "python": platform.python_version()}
    facts["cpus"] = os.cpu_count()
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        facts |= {"gpu": properties.name, "gpu_memory_gib": round(properties.total_memory / 2**30, 1)}
        facts["bf16"] = torch.cuda.is_bf16_supported()
    return facts


def recorded(part: Callable[[], Any]) -> dict[str, Any]:
    """The part's figures, or its error and the last lines of its traceback."""
    try:
        return {"ok": True, **part()}
    except Exception as error:  # a benchmark records what broke and goes on to the next part
        return {
            "ok": False,
            "error": f"{type(error).__name__}: {error}",
            "traceback": traceback.format_exc()[-2000:],
        }


def sampling(scale: Scale, device: torch.device, folder: Path, compile_rows: bool) -> dict[str, Any]:
    """Seconds per image for each batch size, eager and compiled, at the scale's DDIM steps."""
    from trainer.diffusion.ldm import PAD_TO, load_ldm

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = load_ldm(build_ldm_folder(folder, scale.preset), device, dtype)
    rows = []
    for compiled in (False, True) if compile_rows else (False,):
        if compiled:  # one batch shape only: each new shape compiles again (a minute or more)
            model.unet = torch.compile(model.unet)
        for batch in (scale.compiled_batch,) if compiled else scale.sampling_batches:
            images_per_second(model, batch, batch, 2, PAD_TO)  # warm-up (and compilation) at this shape
            rate = images_per_second(model, batch, batch, scale.sampling_steps, PAD_TO)
            seconds = 1 / rate
            rows.append(
                {
                    "batch": batch,
                    "compiled": compiled,
                    "seconds_per_image": round(seconds, 4),
                    "speedup_vs_paper": round(PAPER_SECONDS_PER_IMAGE / seconds, 1),
                }
            )
    best = min(rows, key=lambda row: row["seconds_per_image"])
    return {
        "ddim_steps": scale.sampling_steps,
        "dtype": str(dtype).removeprefix("torch."),
        "paper_seconds_per_image": PAPER_SECONDS_PER_IMAGE,
        "goal_speedup": GOAL_SPEEDUP,
        "rows": rows,
        "best": best,
        "goal_met": scale.preset == "paper" and best["speedup_vs_paper"] >= GOAL_SPEEDUP,
    }


def training(scale: Scale, device: torch.device, folder: Path, steps: int) -> dict[str, Any]:
    """Every train command: 2 fresh steps, then a resume timed over `steps` more steps."""
    pool = synthetic_pool(folder / "pool", scale)
    vgg = random_vgg16(folder / "vgg16.pth")
    results: dict[str, Any] = {}
    autoencoder = folder / "kl"

    def train_autoencoder(max_steps: int, resume: bool) -> Path:
        from trainer.autoencoder.options import autoencoder_options
        from trainer.autoencoder.train import AutoencoderSettings
        from trainer.autoencoder.train import train_autoencoder as train

        # bf16 in the tiny run too, so that the precision changes between commands here as on a GPU
        precision = "bf16" if scale.preset == "tiny" else "auto"
        options = autoencoder_options(
            "kl", scale.preset, max_steps=max_steps, epochs=10_000, perceptual=True, mixed_precision=precision
        )
        settings = AutoencoderSettings(options, perceptual_weights=vgg, resume=resume, progress=False)
        return train(pool, autoencoder, settings)

    def train_ldm(max_steps: int, resume: bool) -> Path:
        from trainer.diffusion.ldm import LDMSettings
        from trainer.diffusion.ldm import train_ldm as train
        from trainer.diffusion.options import ldm_options

        options = ldm_options(scale.preset, max_steps=max_steps, epochs=10_000)
        return train(autoencoder, pool, folder / "ldm", LDMSettings(options, resume=resume, progress=False))

    def train_stylegan2(max_steps: int, resume: bool) -> Path:
        from trainer.stylegan2.options import stylegan2_options
        from trainer.stylegan2.train import StyleGAN2Settings
        from trainer.stylegan2.train import train_stylegan2 as train

        options = stylegan2_options(scale.preset, max_steps=max_steps, epochs=10_000)
        return train(pool, folder / "stylegan2", StyleGAN2Settings(options, resume=resume, progress=False))

    commands = {"autoencoder": train_autoencoder, "ldm": train_ldm, "stylegan2": train_stylegan2}
    for name, train in commands.items():
        fresh_accelerate_state()
        results[name] = recorded(lambda train=train: timed_resume(train, steps, device))
    return results


def fresh_accelerate_state() -> None:
    """Forget accelerate's per-process state, as a new `histosynth train` process starts with:
    accelerate keeps one per process and refuses another mixed precision (the autoencoder and
    the LDM run in bf16 on a GPU, StyleGAN2 in fp32). accelerate's own tests reset it so."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)


def timed_resume(train: Callable[[int, bool], Path], steps: int, device: torch.device) -> dict[str, Any]:
    """Run 2 steps, then resume to 2 + `steps`, timing the resumed run's step loop alone."""
    train(2, False)
    gc.collect()  # the fresh run's objects, so that the peak below is the resumed run's own
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    from trainer.core.model_folder import read_model_info

    with step_clock() as clock:
        info = read_model_info(train(2 + steps, True))
    # the median step: not the first (workers starting, cuDNN choosing its kernels, compiling)
    # nor one that ends in a StyleGAN2 check
    step_seconds = statistics.median(clock["steps"])
    figures = {
        "resumed_on": device.type,
        "steps_timed": steps,
        "global_batch_size": info["global_batch_size"],
        "steps_per_second": round(1 / step_seconds, 3),
        "images_per_second": round(info["global_batch_size"] / step_seconds, 1),
        "first_step_seconds": round(clock["steps"][0], 2),
        "loop_seconds": round(clock["loop"] - clock["checkpoints"], 1),
        "checkpoint_seconds": round(clock["checkpoints"], 1),
        "learning_rate": info["learning_rate"],
        "steps": info["steps"],
    }
    if device.type == "cuda":
        figures["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 1)
    return figures


@contextlib.contextmanager
def step_clock() -> Iterator[dict[str, Any]]:
    """Time every `run_steps` loop, each of its steps (the device synchronised around it) and
    every checkpoint save inside the block (a benchmark's patch of the trainer's shared loop;
    the commands themselves are unchanged)."""
    import trainer.autoencoder.train
    import trainer.core.loop
    import trainer.diffusion.denoising
    import trainer.stylegan2.train

    clock: dict[str, Any] = {"loop": 0.0, "checkpoints": 0.0, "steps": []}
    run_steps, save_checkpoint = trainer.core.loop.run_steps, trainer.core.loop.save_checkpoint

    def timed_run_steps(accelerator, dataset, options, *, step, **kwargs):
        def timed_step(images, labels, index):
            synchronize()
            begun = time.perf_counter()
            loss = step(images, labels, index)
            synchronize()
            clock["steps"].append(time.perf_counter() - begun)
            return loss

        start = time.perf_counter()
        try:
            return run_steps(accelerator, dataset, options, step=timed_step, **kwargs)
        finally:
            synchronize()
            clock["loop"] += time.perf_counter() - start

    def timed_save(*args, **kwargs):
        synchronize()
        start = time.perf_counter()
        try:
            return save_checkpoint(*args, **kwargs)
        finally:
            clock["checkpoints"] += time.perf_counter() - start

    users = (trainer.autoencoder.train, trainer.diffusion.denoising, trainer.stylegan2.train)
    patched = [(module, "run_steps", timed_run_steps) for module in users]
    patched.append((trainer.core.loop, "save_checkpoint", timed_save))
    originals = [(module, name, getattr(module, name)) for module, name, _ in patched]
    for module, name, replacement in patched:
        setattr(module, name, replacement)
    try:
        yield clock
    finally:
        for module, name, original in originals:
            setattr(module, name, original)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def synthetic_pool(folder: Path, scale: Scale) -> Path:
    """Two classes of smooth random RGB tiles at the scale's size (enough for one paper batch of 64)."""
    rng = np.random.default_rng(0)
    for name in ("ADI", "TUM"):
        (folder / name).mkdir(parents=True)
        for index in range(scale.tiles_per_class):
            coarse = rng.integers(0, 255, size=(scale.size // 8, scale.size // 8, 3), dtype=np.uint8)
            tile = Image.fromarray(coarse).resize((scale.size, scale.size), Image.Resampling.BILINEAR)
            tile.save(folder / name / f"{name}-{index:03d}.png")
    return folder


def random_vgg16(path: Path) -> Path:
    """A torchvision VGG16 state dict with random weights: LPIPS at its real cost, offline."""
    import torchvision

    torch.save(torchvision.models.vgg16().state_dict(), path)
    return path


def ema(scale: Scale, device: torch.device) -> dict[str, Any]:
    """The LDM's EMA step over the scale's U-Net on the device: fused (`foreach`, what `train
    ldm` uses on a GPU) against a loop over the tensors (what it uses on a CPU)."""
    from trainer.diffusion.ldm import build_unet
    from trainer.diffusion.options import ldm_options

    options = ldm_options(scale.preset)
    parameters = list(build_unet(options, 4, options.size // 8).to(device).parameters())
    fused = min(ema_seconds(True, parameters, 3) for _ in range(3))
    looped = min(ema_seconds(False, parameters, 3) for _ in range(3))
    return {
        "foreach_seconds": round(fused, 4),
        "loop_seconds": round(looped, 4),
        "speedup": round(looped / fused, 2),
    }


def memorization(scale: Scale, device: torch.device, folder: Path) -> dict[str, Any]:
    """The audit's search on the device against a bare GEMM of its shapes, best of 3 each."""
    from evaluator.memorization.audit import MemorizationSettings, audit_memorization

    write_gray_tiles(folder / "train" / "A", scale.memorization_train, seed=1)
    write_gray_tiles(folder / "gen" / "A", scale.memorization_queries, seed=2)
    target = "cuda" if device.type == "cuda" else "cpu"
    settings = MemorizationSettings(
        n=scale.memorization_queries, size=256, flips=False, cache_dir=folder / "cache", device=target
    )

    def audit() -> object:
        return audit_memorization(folder / "train", {"gen": folder / "gen"}, None, settings)

    rows = scale.memorization_queries * 4
    bare = BareGemm(rows, 256 * 256, scale.memorization_train, target)
    audit()  # builds the cache and warms the device
    bare.run()
    gemm = min(timed(bare.run)[0] for _ in range(3))
    warm = min(timed(audit)[0] for _ in range(3))
    flops = 2.0 * rows * 256 * 256 * scale.memorization_train
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "device": target,
        "shapes": [rows, 256 * 256, scale.memorization_train],
        "bare_gemm_seconds": round(gemm, 3),
        "audit_seconds": round(warm, 3),
        "ratio": round(warm / gemm, 2),
        "gemm_tflops": round(flops / gemm / 1e12, 2),
    }


if __name__ == "__main__":
    main()
