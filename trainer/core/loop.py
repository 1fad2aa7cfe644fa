"""The part every training run shares: accelerate, resume, the step loop, checkpoints, progress.

A model module (`autoencoder`, `ldm`) builds its networks and optimizers, prepares them with
accelerate, and hands one `step(images, labels, step) -> loss` function to `run_steps`, which
walks the epochs in the seeded order, skips what a resumed run has done, saves checkpoints and
draws the progress bar. Nothing here assumes one process: batches are sharded by process index,
checkpoints are written by all processes together, and only the main process draws or publishes,
so `accelerate launch -m histosynth train ...` runs the same code on several GPUs or nodes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from histosynth.errors import HistosynthError
from histosynth.progress import progress_bar, progress_enabled
from trainer.core.checkpoints import check_resumable, load_checkpoint, prepare_out_folder, save_checkpoint
from trainer.core.data import TileDataset, TrainingPool, epoch_batches, steps_per_epoch
from trainer.core.model_folder import publish_model, write_model_info
from trainer.core.options import TrainOptions, changed_settings, from_record, to_record

logger = logging.getLogger(__name__)

StepFunction = Callable[[torch.Tensor, torch.Tensor, int], float]


def make_accelerator(options: TrainOptions) -> Accelerator:
    """An `Accelerator` with the run's mixed precision: `auto` is fp16 on CUDA and none on CPU."""
    precision = options.mixed_precision
    if precision == "auto":
        precision = "fp16" if torch.cuda.is_available() else "no"
    return Accelerator(mixed_precision=precision)


def run_record(kind: str, options: TrainOptions, pool: TrainingPool, **facts: Any) -> dict[str, Any]:
    """What a checkpoint records of its run, and `resume_step` compares: the model kind, every
    setting, the classes and the pool's fingerprint, plus a model's own `facts` (the frozen
    autoencoder's hash, say)."""
    return {
        "kind": kind,
        "settings": to_record(options),
        "classes": pool.classes,
        "data_fingerprint": pool.fingerprint,
        **facts,
    }


def resume_step(
    accelerator: Accelerator, out: Path, resume: bool, options: TrainOptions, run: dict[str, Any]
) -> int:
    """Check `out`; when resuming, restore the newest checkpoint into the prepared objects.

    Args:
        accelerator: holds the prepared models, optimizers, schedulers and registered EMA.
        out: the run's folder.
        resume: `--resume`.
        options: this invocation's settings; they must equal the checkpoint's, except for
            those a resume may change (`trainer.core.options.RESUMABLE_CHANGES`).
        run: this run's record (`settings`, `classes`, `data_fingerprint`).

    Returns:
        The optimizer steps already done (0 for a fresh run).

    Raises:
        HistosynthError: see `prepare_out_folder`; or the checkpoint's settings, classes or
            pool differ from this invocation's (the message names the fields).
    """
    checkpoint = prepare_out_folder(out, resume)
    if checkpoint is None:
        if resume:
            logger.info("%s holds no checkpoint yet; starting a new run", out)
        return 0
    stored = load_checkpoint(accelerator, checkpoint)
    # settings first: another --fingerprint mode would otherwise read as another pool
    changed = changed_settings(from_record(type(options), stored["settings"]), options)
    if changed:
        raise HistosynthError(
            f"{checkpoint}: the run used other settings ({', '.join(changed)}); "
            "resume with the options it was started with"
        )
    check_resumable(stored, checkpoint, fingerprint=run["data_fingerprint"], classes=run["classes"])
    logger.info("resuming %s from step %d", out, stored["step"])
    return int(stored["step"])


def total_steps(options: TrainOptions, n_tiles: int, num_processes: int) -> int:
    """The run's length: all epochs, or fewer where `max_steps` says so."""
    per_epoch = steps_per_epoch(n_tiles, options.batch_size, num_processes)
    if per_epoch == 0:
        raise HistosynthError(
            f"the pool has {n_tiles} tiles, fewer than one batch of "
            f"{options.batch_size} x {num_processes} processes; lower --batch-size"
        )
    epochs_total = per_epoch * options.epochs
    return epochs_total if options.max_steps is None else min(options.max_steps, epochs_total)


def run_steps(
    accelerator: Accelerator,
    dataset: TileDataset | torch.utils.data.Dataset,
    options: TrainOptions,
    *,
    out: Path,
    start: int,
    step: StepFunction,
    run: dict[str, Any],
    description: str,
    progress: bool | None = None,
) -> int:
    """Train from step `start` to the end of the run; return the steps done.

    Args:
        accelerator: the run's accelerator (devices, processes, state saving).
        dataset: indexed by (epoch, index) pairs, as `trainer.core.data.TileDataset`.
        options: batch size, seed, epochs, max steps, checkpoint cadence.
        out: the run's folder (checkpoints go to `out/checkpoints/`).
        start: steps already done (from `resume_step`).
        step: trains one batch; gets images, labels on the device and the 0-based global
            step index, returns the loss to show.
        run: the record saved with each checkpoint.
        description: the progress bar's label.
        progress: `--progress/--no-progress` (None: when stderr is a terminal).
    """
    n_tiles = len(dataset)
    total = total_steps(options, n_tiles, accelerator.num_processes)
    per_epoch = steps_per_epoch(n_tiles, options.batch_size, accelerator.num_processes)
    done = start
    shown = progress_enabled(progress) and accelerator.is_main_process
    with progress_bar(shown, fields=("loss",), transient=False) as bar:
        task = bar.add_task(description, total=total, completed=done, loss=math.nan)
        while done < total:
            epoch, skip = divmod(done, per_epoch)
            batches = epoch_batches(
                n_tiles,
                options.batch_size,
                options.seed,
                epoch,
                num_processes=accelerator.num_processes,
                process_index=accelerator.process_index,
                skip=skip,
            )
            loader = torch.utils.data.DataLoader(
                dataset, batch_sampler=batches, num_workers=options.num_workers
            )
            for images, labels in loader:
                loss = step(images.to(accelerator.device), labels.to(accelerator.device), done)
                done += 1
                bar.update(task, advance=1, loss=loss)
                if done % options.checkpoint_every == 0 or done == total:
                    save_checkpoint(accelerator, out, done, run, options.keep_checkpoints)
                if done >= total:
                    break
    if done == start and start > 0:
        logger.info("%s: already trained for %d steps; nothing to do", out, done)
    return done


def publish_on_main_process(
    accelerator: Accelerator, out: Path, write: Callable[[Path], None], **info: Any
) -> None:
    """Publish the model folder from the main process once every process has finished training.

    `write(staging)` writes the components (`trainer.core.model_folder.publish_model`), then
    `histosynth.json` seals the folder (`write_model_info(out, **info)`); the other processes
    wait, so none returns before the model exists.
    """
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        publish_model(out, write)
        write_model_info(out, **info)
    accelerator.wait_for_everyone()
