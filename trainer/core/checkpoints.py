"""Resumable checkpoints: `<out>/checkpoints/step-N/`, written whole or not at all, rotated.

A checkpoint is accelerate's `save_state` (model weights, optimizers, learning-rate schedulers,
the registered EMA, gradient scaler and every process's RNG states) plus `run.json`: the step,
the settings, the classes and the pool fingerprint. The data order needs no state of its own:
epoch order and rotations are pure functions of (seed, epoch, index) (`trainer.core.data`), so the
step count says where the data stands. A checkpoint is saved into a hidden temporary folder and
renamed to `step-N` only when complete, so a run killed while saving resumes from the previous
one. `--resume` takes the newest and refuses one whose settings or pool differ from the run's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from histosynth.errors import HistosynthError
from histosynth.files import atomic_write_text, fsync_folder
from trainer.core.model_folder import CHECKPOINTS, INFO_NAME

RUN_NAME = "run.json"
_STEP = re.compile(r"^step-(\d+)$")


def checkpoint_folders(out: str | Path) -> list[tuple[int, Path]]:
    """The complete checkpoints of a run, oldest first, as (step, folder)."""
    return step_folders(Path(out) / CHECKPOINTS)


def step_folders(root: str | Path) -> list[tuple[int, Path]]:
    """The complete `step-N` folders directly in `root`, oldest first, as (step, folder)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _STEP.match(entry.name)
        if match and (entry / RUN_NAME).is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def partial_folder(root: str | Path, step: int) -> Path:
    """The hidden folder checkpoint `step` is written into before `seal_checkpoint` names it."""
    return Path(root) / f".step-{step}.partial"


def open_checkpoint(root: str | Path, step: int) -> Path:
    """Create `partial_folder(root, step)` afresh (a run killed while saving leaves one behind)."""
    partial = partial_folder(root, step)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def seal_checkpoint(root: str | Path, step: int, run: dict[str, Any], keep: int) -> Path:
    """Write `run.json` into the partial folder, rename it `step-<step>`, keep the newest `keep`."""
    root = Path(root)
    partial, final = partial_folder(root, step), root / f"step-{step}"
    atomic_write_text(partial / RUN_NAME, json.dumps({**run, "step": step}, indent=2) + "\n")
    fsync_folder(partial)
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    fsync_folder(root)
    for _, old in step_folders(root)[:-keep]:
        shutil.rmtree(old)
    return final


def prepare_out_folder(out: str | Path, resume: bool) -> Path | None:
    """Check that `out` may receive this run; return the checkpoint to resume from, if any.

    Args:
        out: the run's output folder.
        resume: `--resume`: continue from the newest checkpoint. Where `out` holds no run
            yet, the run starts from scratch (so a preemptible job can always pass it).

    Raises:
        HistosynthError: `out` is a file; or (without `--resume`) already holds a model or
            checkpoints of a run, which a fresh run would mix with its own; or (with it) holds
            a model whose checkpoints are gone.
    """
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise HistosynthError(f"{out}: output path exists and is not a folder")
    newest = checkpoint_folders(out)
    if resume:
        if not newest and (out / INFO_NAME).exists():
            raise HistosynthError(
                f"{out}: holds a model but no checkpoint to resume from; choose another --out"
            )
        return newest[-1][1] if newest else None
    if newest or (out / INFO_NAME).exists():
        raise HistosynthError(
            f"{out}: holds another run; pass --resume to continue it or choose another --out"
        )
    return None


def read_run(checkpoint: str | Path) -> dict[str, Any]:
    """The `run.json` of a checkpoint folder."""
    path = Path(checkpoint) / RUN_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise HistosynthError(f"{path}: unreadable checkpoint record ({error})") from error


def save_checkpoint(
    accelerator: Accelerator, out: str | Path, step: int, run: dict[str, Any], keep: int
) -> Path:
    """Save the full training state as `<out>/checkpoints/step-<step>/`; keep the newest `keep`.

    Every process must call this (each saves its own RNG state). The folder appears under its
    final name only once every file is written.
    """
    root = Path(out) / CHECKPOINTS
    if accelerator.is_main_process:
        open_checkpoint(root, step)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial_folder(root, step)))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        seal_checkpoint(root, step, run, keep)
    accelerator.wait_for_everyone()
    return root / f"step-{step}"


def load_checkpoint(accelerator: Accelerator, checkpoint: str | Path) -> dict[str, Any]:
    """Restore the state `save_checkpoint` wrote into the prepared objects; return its run record."""
    run = read_run(checkpoint)
    accelerator.load_state(str(checkpoint))
    return run


def fingerprint_difference(fingerprint: dict) -> str:
    """What a differing pool fingerprint (one pool's, or several sources') means, for an error message."""
    if "contents_sha256" in json.dumps(fingerprint):
        return "file names or contents differ, by sha256"
    return "file names or sizes differ"


def check_resumable(run: dict[str, Any], checkpoint: Path, *, fingerprint: dict, classes: list[str]) -> None:
    """Refuse to resume onto a different pool or class list than the checkpoint's.

    Raises:
        HistosynthError: naming the checkpoint and what differs.
    """
    if run.get("data_fingerprint") != fingerprint:
        difference = fingerprint_difference(fingerprint)
        raise HistosynthError(f"{checkpoint}: trained on a different pool ({difference})")
    if run.get("classes") != classes:
        raise HistosynthError(f"{checkpoint}: trained on classes {run.get('classes')}, not {classes}")
