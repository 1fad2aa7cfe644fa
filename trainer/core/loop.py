"""The part every training run shares: accelerate, resume, the step loop, checkpoints, progress.

A model module (`autoencoder`, `ldm`) builds its networks and optimizers, prepares them with
accelerate, registers what else a checkpoint must hold (`register_states`), and hands one
`step(images, labels, step) -> loss` function to `run_steps`, which walks the epochs in the
seeded order, skips what a resumed run has done, saves checkpoints and draws the progress bar.
Nothing here assumes one process: each global batch is shared out by process index
(`trainer.core.batches`), checkpoints are written by all processes together, and only the main
process draws or publishes, so `accelerate launch -m histosynth train ...` runs the same code on
several GPUs or nodes.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs

from histosynth.errors import HistosynthError
from histosynth.progress import progress_bar, progress_enabled
from trainer.core.batches import BatchPlan, batch_plan
from trainer.core.checkpoints import (
    check_resumable,
    load_checkpoint,
    prepare_out_folder,
    read_run,
    save_checkpoint,
)
from trainer.core.data import TileDataset, TrainingPool, epoch_batches, steps_per_epoch
from trainer.core.model_folder import publish_model, write_model_info
from trainer.core.options import TrainOptions, changed_settings, from_record, to_record

logger = logging.getLogger(__name__)

StepFunction = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor | float]

# The progress bar's loss is read back from the device every this many steps (and at the end).
LOSS_EVERY = 25

# How long a process waits at a collective for the others: the main process may spend minutes
# alone (a pool's fingerprint, a checkpoint of a large model), beyond NCCL's default of 10.
PROCESS_GROUP_TIMEOUT = timedelta(hours=2)
# the checkpoints' run record: version 2 is the one whose `batch_size` is the global batch (in
# version 1, unnumbered, it was each process's, and the rate scaled with the processes)
RECORD_VERSION = 2

# The objects each accelerator's checkpoints hold beside its prepared ones (`register_states`).
_REGISTERED: weakref.WeakKeyDictionary[Accelerator, list[Any]] = weakref.WeakKeyDictionary()


def make_accelerator(options: TrainOptions) -> Accelerator:
    """An `Accelerator` for the run (`accelerator_settings`); TF32 on where CUDA is."""
    if torch.cuda.is_available():  # what stays in float32 runs on the tensor cores (TF32)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Accelerator(**accelerator_settings(options))


def accelerator_settings(options: TrainOptions) -> dict[str, Any]:
    """The run's mixed precision, compilation and process-group timeout, as `Accelerator` takes them.

    `auto` precision is bf16 on a GPU that has it, fp16 (with a loss scaler) on one that has not,
    and none on the CPU; `compile_model` compiles the models accelerate prepares (inductor);
    processes wait `PROCESS_GROUP_TIMEOUT` for one another at a collective. (accelerate keeps
    one state per process: a later run in the same process with another precision is refused,
    and the first run's compilation setting holds for the later ones.)
    """
    precision = options.mixed_precision
    if precision == "auto":
        precision = "no"
        if torch.cuda.is_available():
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return {
        "mixed_precision": precision,
        "dynamo_backend": "inductor" if options.compile_model else "no",
        "kwargs_handlers": [InitProcessGroupKwargs(timeout=PROCESS_GROUP_TIMEOUT)],
    }


def memory_format(device: torch.device) -> torch.memory_format:
    """How a run's convolutional networks and image batches lie in memory on `device`.

    channels_last (NHWC) on a GPU, where cuDNN's tensor-core convolutions work in it and would
    otherwise transpose every activation twice; the default layout on a CPU, where oneDNN picks
    its own blocked layout either way and a training step measured no faster in NHWC
    (`benchmarks/train_throughput.py`).
    """
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def in_memory_format(device: torch.device, *networks: torch.nn.Module) -> None:
    """Lay out the 4-d weights of `networks` as `memory_format(device)` says (before `prepare`)."""
    for network in networks:
        network.to(memory_format=memory_format(device))


def register_states(accelerator: Accelerator, *states: Any) -> None:
    """Save and restore `states` (an EMA, ADA's state, ...) with the run's checkpoints.

    Each needs `state_dict`/`load_state_dict`; `resume_step` moves each back to the run's device
    after loading, since a checkpoint is read onto the CPU and some objects (diffusers'
    `EMAModel`) keep the tensors they are given, so the first step after a resume on a GPU
    would mix devices.
    """
    for state in states:
        accelerator.register_for_checkpointing(state)
    _REGISTERED.setdefault(accelerator, []).extend(states)


def run_plan(accelerator: Accelerator, options: TrainOptions) -> BatchPlan:
    """How this run's global batch is shared out over `accelerator`'s processes."""
    return batch_plan(options.batch_size, options.per_device_batch_size, accelerator)


def run_record(kind: str, options: TrainOptions, pool: TrainingPool, **facts: Any) -> dict[str, Any]:
    """What a checkpoint records of its run, and `resume_step` compares: the model kind, every
    setting, the classes and the pool's fingerprint, plus a model's own `facts` (the frozen
    autoencoder's hash, say)."""
    return {
        "record_version": RECORD_VERSION,
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
    # every check before any weight is loaded: another network size or --compile would otherwise
    # fail in the loading, on mismatched tensors, instead of naming the setting
    stored = read_run(checkpoint)
    version = stored.get("record_version", 1)
    if version != RECORD_VERSION:
        raise HistosynthError(
            f"{checkpoint}: written by a histosynth whose --batch-size was per process (run record "
            f"version {version}, this one reads {RECORD_VERSION}); start the run again"
        )
    # settings first: another --fingerprint mode would otherwise read as another pool
    changed = changed_settings(from_record(type(options), stored["settings"]), options)
    if changed:
        raise HistosynthError(
            f"{checkpoint}: the run used other settings ({', '.join(changed)}); "
            "resume with the options it was started with"
        )
    check_resumable(stored, checkpoint, fingerprint=run["data_fingerprint"], classes=run["classes"])
    restore_checkpoint(accelerator, checkpoint)
    logger.info("resuming %s from step %d", out, stored["step"])
    return int(stored["step"])


def batch_record(plan: BatchPlan, steps: int, learning_rate: float, rule: str) -> dict[str, Any]:
    """What `histosynth.json` records of a run's batches and rate, so that two runs on different
    numbers of GPUs can be compared by their records: the global batch, how it was shared out,
    the rate the optimizer used (and by which rule), and the images seen in `steps` steps."""
    return {
        "global_batch_size": plan.global_size,
        "num_processes": plan.processes,
        "per_device_batch_size": plan.micro,
        "gradient_accumulation": plan.accumulation,
        "learning_rate": learning_rate,
        "learning_rate_rule": rule,
        "images_seen": steps * plan.global_size,
    }


def plain_model(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """The network inside a prepared model (no DDP, no torch.compile), leaving `model` as it is.

    accelerate's `unwrap_model` keeps a compiled model compiled by putting the bare network in
    its place inside the compiled wrapper, which drops DDP from the prepared model itself: on
    several GPUs with `--compile` the gradients would no longer be all-reduced (each process
    training its own copy) and the checkpoints' keys would change between save and resume.
    """
    return accelerator.unwrap_model(model, keep_torch_compile=False)


def restore_checkpoint(accelerator: Accelerator, folder: Path) -> dict[str, Any]:
    """Load a checkpoint into the prepared and registered objects, and put every registered
    state back on the run's device (see `register_states`); the checkpoint's run record."""
    stored = load_checkpoint(accelerator, folder)
    for state in _REGISTERED.get(accelerator, ()):
        if hasattr(state, "to"):
            state.to(accelerator.device)
    return stored


def total_steps(options: TrainOptions, n_tiles: int) -> int:
    """The run's length in optimizer steps: all epochs, or fewer where `max_steps` says so (the
    same on any number of processes, since `batch_size` is the global batch)."""
    per_epoch = steps_per_epoch(n_tiles, options.batch_size)
    if per_epoch == 0:
        raise HistosynthError(
            f"the pool has {n_tiles} tiles, fewer than one batch of {options.batch_size}; lower --batch-size"
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

    One DataLoader serves every remaining epoch, so its workers decode the next epoch's first
    tiles while this one ends; the loss is read back from the device every `LOSS_EVERY` steps
    only (each read waits for the step to finish).

    Args:
        accelerator: the run's accelerator (devices, processes, state saving).
        dataset: indexed by (epoch, index) pairs, as `trainer.core.data.TileDataset`.
        options: batch size, seed, epochs, max steps, checkpoint cadence, data workers.
        out: the run's folder (checkpoints go to `out/checkpoints/`).
        start: steps already done (from `resume_step`).
        step: trains one batch; gets images, labels on the device and the 0-based global
            step index, returns the loss to show (a tensor, read when shown).
        run: the record saved with each checkpoint.
        description: the progress bar's label.
        progress: `--progress/--no-progress` (None: when stderr is a terminal).
    """
    n_tiles = len(dataset)
    plan = run_plan(accelerator, options)
    total = total_steps(options, n_tiles)
    batches = _batches_from(n_tiles, plan, options, start, total)
    device = accelerator.device
    cuda, layout = device.type == "cuda", memory_format(device)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=options.num_workers, pin_memory=cuda
    )
    done = start
    shown = progress_enabled(progress) and accelerator.is_main_process
    with progress_bar(shown, fields=("loss",), transient=False) as bar:
        task = bar.add_task(description, total=total, completed=done, loss=math.nan)
        for images, labels in loader:
            images = images.to(device, non_blocking=cuda, memory_format=layout)
            loss = step(images, labels.to(device, non_blocking=cuda), done)
            done += 1
            if shown and (done % LOSS_EVERY == 0 or done == total):
                bar.update(task, advance=1, loss=float(loss))
            else:
                bar.update(task, advance=1)
            if done % options.checkpoint_every == 0 or done == total:
                save_checkpoint(accelerator, out, done, run, options.keep_checkpoints)
    if done == start and start > 0:
        logger.info("%s: already trained for %d steps; nothing to do", out, done)
    return done


def _batches_from(
    n_tiles: int, plan: BatchPlan, options: TrainOptions, start: int, total: int
) -> Iterator[list[tuple[int, int]]]:
    """This process's batches of steps `start` to `total`, epoch after epoch in the seeded order."""
    per_epoch = steps_per_epoch(n_tiles, options.batch_size)
    done = start
    while done < total:
        epoch, skip = divmod(done, per_epoch)
        for batch in epoch_batches(
            n_tiles,
            plan.per_process,
            options.seed,
            epoch,
            num_processes=plan.processes,
            process_index=plan.process_index,
            skip=skip,
        ):
            if done >= total:
                return
            yield batch
            done += 1


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
