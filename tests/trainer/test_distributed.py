"""The multi-process path of the trainer, run for real: two processes on the CPU (gloo).

`accelerate launch` on a GPU machine and `torchrun` here start the same code; accelerate takes
the CPU's gloo backend when ACCELERATE_USE_CPU is set. StyleGAN2 is the run that needs this
test: its R1 and path-length penalties differentiate a gradient, and DistributedDataParallel
fails the step after one whose backward left a parameter without a gradient.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from histosynth.pools import read_manifest
from trainer.core.model_folder import read_model_info
from trainer.generate import generate_pool
from trainer.stylegan2.train import LOG_NAME


def torchrun(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m histosynth ARGS` in two CPU processes, as `accelerate launch --cpu` starts them."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    environment = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [*command, "-m", "histosynth", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env=environment,
    )


def test_stylegan2_trains_and_generates_in_two_processes(tmp_path: Path, tissue: np.ndarray) -> None:
    pool = tmp_path / "pool"
    for label, name in enumerate(("ADI", "TUM")):
        (pool / name).mkdir(parents=True)
        for item in range(4):
            top, left = 28 * label, 28 * item
            Image.fromarray(tissue[top : top + 28, left : left + 28]).save(pool / name / f"{name}-{item}.png")
    out = tmp_path / "model"
    # 8 tiles, global batch 4 (2 per process): two steps per epoch; R1 at steps 0 and 16, path length every 4
    result = torchrun(
        *("train", "stylegan2", "--data", pool, "--out", out, "--preset", "tiny", "--epochs", "20"),
        *("--max-steps", "18", "--checkpoint-every", "9", "--no-progress"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (result.stdout + result.stderr).count(f"wrote {out}") == 1  # the main process reports
    assert result.stderr.count("lowest diversity") == 2  # a line per check, from the main process
    assert "Grad strides do not match" not in result.stderr  # gradients in their buckets' layout
    info = read_model_info(out, ["stylegan2"])
    assert info["steps"] == 18
    recorded = ("global_batch_size", "num_processes", "per_device_batch_size", "images_seen")
    assert [info[key] for key in recorded] == [4, 2, 2, 18 * 4]  # the same global run as on one process
    checks = [json.loads(line) for line in (out / LOG_NAME).read_text().splitlines()]
    assert [check["step"] for check in checks] == [9, 18]  # written once, by the main process

    # each process draws its share of the images; every file is a function of (model, seed, class, i)
    shared = torchrun(
        "generate", "--model", out, "--out", tmp_path / "two", "--per-class", "3", "--no-progress"
    )
    assert shared.returncode == 0, shared.stderr[-3000:]
    assert (shared.stdout + shared.stderr).count("wrote ") == 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the kernels the two processes ran (OMP_NUM_THREADS=1) round alike
    try:
        alone = generate_pool(out, tmp_path / "one", per_class=3, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert read_manifest(tmp_path / "two")["files"] == read_manifest(alone)["files"]


def test_an_ldm_on_two_processes_is_the_one_process_run(tmp_path: Path, tiny_models, cli) -> None:
    """`--batch-size` is the global batch: two processes take half of each and draw the step's
    noise for all of it, so the run records the same numbers as on one process and ends with the
    same weights up to rounding; both processes encode their half of the latent cache."""
    args = ["train", "ldm", "--autoencoder", tiny_models.autoencoder, "--data", tiny_models.pool]
    args += ["--preset", "tiny", "--batch-size", "4", "--epochs", "2", "--max-steps", "3", "--no-progress"]
    alone = cli(*args, "--out", tmp_path / "one")  # this test's cache (isolated_caches)
    assert alone.returncode == 0, alone.stderr
    shared = torchrun(
        *args, "--out", tmp_path / "two", env={"HISTOSYNTH_CACHE_DIR": str(tmp_path / "cache2")}
    )
    assert shared.returncode == 0, shared.stderr[-3000:]
    one, two = (read_model_info(tmp_path / name, ["ldm"]) for name in ("one", "two"))
    compared = ("global_batch_size", "learning_rate", "steps", "images_seen", "per_device_batch_size")
    assert [one[key] for key in compared] == [4, two["learning_rate"], 3, 12, 4]
    assert [two[key] for key in compared] == [4, one["learning_rate"], 3, 12, 2]
    assert (one["num_processes"], two["num_processes"]) == (1, 2)
    (first,), (second,) = (
        list((cache / "latents").glob("*/moments.npy")) for cache in (tmp_path / "cache", tmp_path / "cache2")
    )
    np.testing.assert_allclose(np.load(first), np.load(second), atol=1e-5)  # each half encoded by one process
    weights = [
        load_file(tmp_path / name / "unet" / "diffusion_pytorch_model.safetensors") for name in ("one", "two")
    ]
    differences = torch.cat([(weights[0][key] - weights[1][key]).abs().flatten() for key in weights[0]])
    # rounding apart (threads, the all-reduce), the same steps; Adam may turn a near-zero
    # gradient's rounding into a step of up to the rate, so bound the worst case by the rate
    assert float(differences.median()) < 1e-6
    assert float(differences.max()) <= 2 * one["learning_rate"] * one["steps"]


def test_a_tile_that_fails_in_one_process_stops_both(tmp_path: Path, tiny_models) -> None:
    """A tile that cannot be decoded in the second process's share of the latent cache: that
    process names it, the first one (which encoded its share) says another process failed, and
    neither waits for the other at the statistics' sum."""
    pool = tmp_path / "pool"
    shutil.copytree(tiny_models.pool, pool)
    broken = sorted(pool.glob("*/*.png"))[-1]  # the last class's last tile: the second half
    broken.write_bytes(broken.read_bytes()[:60])  # its header (the size) intact, its pixels cut
    result = torchrun(
        *("train", "ldm", "--autoencoder", tiny_models.autoencoder, "--data", pool, "--out", tmp_path / "m"),
        *("--preset", "tiny", "--max-steps", "1", "--workers", "0", "--no-progress"),
        env={"HISTOSYNTH_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert result.returncode != 0
    assert broken.name in result.stderr
    assert not (tmp_path / "m" / "histosynth.json").exists()
    assert not list((tmp_path / "cache" / "latents").iterdir())  # the partial cache removed
