"""The multi-process path of the trainer, run for real: two processes on the CPU (gloo).

`accelerate launch` on a GPU machine and `torchrun` here start the same code; accelerate takes
the CPU's gloo backend when ACCELERATE_USE_CPU is set. StyleGAN2 is the run that needs this
test: its R1 and path-length penalties differentiate a gradient, and DistributedDataParallel
fails the step after one whose backward left a parameter without a gradient.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from trainer.model_folder import read_model_info
from trainer.stylegan2_train import LOG_NAME


def test_stylegan2_trains_in_two_processes_through_r1_and_path_length_steps(
    tmp_path: Path, tissue: np.ndarray
) -> None:
    pool = tmp_path / "pool"
    for label, name in enumerate(("ADI", "TUM")):
        (pool / name).mkdir(parents=True)
        for item in range(4):
            top, left = 28 * label, 28 * item
            Image.fromarray(tissue[top : top + 28, left : left + 28]).save(pool / name / f"{name}-{item}.png")
    out = tmp_path / "model"
    # 8 tiles, batch 4 per process: one step per epoch; R1 runs at steps 0 and 16, path length every 4
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"),
        *("--standalone", "-m", "histosynth", "train", "stylegan2"),
        *("--data", pool, "--out", out, "--preset", "tiny", "--epochs", "20", "--max-steps", "18"),
        *("--checkpoint-every", "9", "--no-progress"),
    ]
    environment = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=600, env=environment
    )
    assert result.returncode == 0, result.stderr[-3000:]
    info = read_model_info(out, ["stylegan2"])
    assert info["steps"] == 18
    checks = [json.loads(line) for line in (out / LOG_NAME).read_text().splitlines()]
    assert [check["step"] for check in checks] == [9, 18]  # written once, by the main process
