"""Resumable classifier runs: a fastai callback that checkpoints a fit and continues it exactly.

`fit_one_cycle` keeps its state in several places, and a resumed fit must find every one as the
uninterrupted fit had it: the weights and fastai's optimizer (Adam's moments and hypers),
the one-cycle position (`train_iter`, `pct_train`), the recorder's rows and smoothed loss,
`SaveModelCallback`'s best validation loss and best weights, fp16's loss scale, the RNG
states of python, numpy and torch (the head's dropout; CUDA too), and the training loader's
own `random.Random`, from which fastai draws each epoch's shuffle. A checkpoint `<root>/step-N/` holds them:

- `learner.pth`: fastai's `save_model` (weights and optimizer);
- `scaler.pth`: the fp16 gradient scaler's state, when training in fp16 (CUDA);
- `best.pth`: the best weights so far (absent before the first validation);
- `rng-<rank>.pth`: each process's torch, CUDA, python and numpy RNG states;
- `run.json`: the run's record (settings, classes, pool fingerprints), the position
  (`epoch`, `iteration`: the next batch to train), the loader's RNG state at the start of
  that epoch, the recorder's rows, the smoothed loss and the best validation loss.

A checkpoint is taken where nothing is half done: before a batch (every `every` steps) or
before an epoch, so the epoch before it is validated and recorded. It is written into a hidden
folder and renamed when complete (`trainer.core.checkpoints`), and older ones are rotated.

Resuming replays the fit up to the saved position without computing anything: finished epochs
are cancelled with their recorded rows put back (so the recorder and the tracker see what they
saw), batches before the position are cancelled before any other callback acts on them, and at
the position every state above is restored. The loop then goes on as if never stopped, which
the tests check bitwise on the CPU. The recorder's per-step plotting lists (`losses`, `lrs`)
hold placeholders for the replayed steps; nothing here reads them.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from histosynth.errors import HistosynthError
from trainer.classifier.learner import FitRecord
from trainer.classifier.options import ClassifierOptions
from trainer.core.checkpoints import (
    check_resumable,
    open_checkpoint,
    partial_folder,
    read_run,
    seal_checkpoint,
    step_folders,
)
from trainer.core.model_folder import CHECKPOINTS, INFO_NAME, read_model_info
from trainer.core.options import RESUMABLE_CHANGES, changed_settings, from_record

with warnings.catch_warnings():
    # fastai.layers compiles two activations with torch.jit.script at import, which torch deprecates.
    warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
    from fastai.callback.core import (
        Callback,
        CancelBatchException,
        CancelEpochException,
        CancelFitException,
    )
    from fastai.learner import load_model, save_model
    from fastai.torch_core import distrib_barrier, rank_distrib
    from fastcore.foundation import L

LEARNER_FILE = "learner.pth"
BEST_FILE = "best.pth"
SCALER_FILE = "scaler.pth"
EXPERIMENT_RECORD = "classifier.json"
MODELS = "models"
# More epochs stretch the one-cycle schedule over every step already taken, so, unlike the
# generators' constant rates, a classifier run cannot be extended by `--epochs`.
RESUMABLE = tuple(name for name in RESUMABLE_CHANGES if name != "epochs")
# What a run's record holds besides its settings, and the option that sets it.
RECORDED_FLAGS = {"caps": "--cap", "pretrained": "--pretrained", "stain": "--stain-reference"}


class Checkpoints(Callback):
    """Save the fit every `every` steps and at its end; stop after `max_steps`; resume from `resume`.

    Args:
        root: the run's checkpoint folder (`<out>/checkpoints/<arm>-seed<S>`).
        every: save before the batch (or epoch) that follows every `every`-th step.
        keep: how many of the newest checkpoints to keep.
        max_steps: stop the fit once it has done this many optimizer steps (None: all epochs).
        record: what identifies the run (settings, classes, fingerprints), saved in `run.json`.
        resume: the checkpoint to continue from, or None for a fresh fit.

    Set `best_path` to the file `SaveModelCallback` keeps the best weights in
    (`trainer.classifier.learner.best_weights_path`) once the learner exists.
    """

    # Before TrainEvalCallback (-10) and MixedPrecision (10): a replayed batch is cancelled
    # before anyone counts it or enters autocast, and a checkpoint sees the loop between steps.
    order = -20

    def __init__(
        self,
        root: Path,
        every: int,
        keep: int,
        max_steps: int | None,
        record: dict[str, Any],
        resume: Path | None,
    ) -> None:
        self.root, self.every, self.keep, self.max_steps = Path(root), every, keep, max_steps
        self.record = record
        self.best_path: Path | None = None
        self.resume = resume
        self.start = read_run(resume) if resume is not None else None  # where the fit continues
        self.pending = self.start  # until restored
        self.saved_step = None if self.start is None else int(self.start["step"])
        self.stopped = False

    def before_fit(self) -> None:
        self.loader_state = self.dls.train.rng.getstate()

    def before_epoch(self) -> None:
        pending = self.pending
        if pending is not None and self.epoch < pending["epoch"]:
            self._replay_epoch(pending["values"][self.epoch])
        if pending is not None and self.epoch == pending["epoch"] and pending["iteration"] == 0:
            self._restore()
        if self.pending is None and self.epoch > 0:
            self._at_step(iteration=0)

    def before_train(self) -> None:
        loader = self.dls.train
        if self.start is not None and self.epoch == self.start["epoch"]:
            version, keys, gauss = self.start["loader_rng"]
            loader.rng.setstate((version, tuple(keys), gauss))
        self.loader_state = loader.rng.getstate()  # this epoch's shuffle is drawn from it next

    def before_batch(self) -> None:
        if not self.training:
            return
        if self.pending is not None:
            if self.iter < self.pending["iteration"]:
                raise CancelBatchException
            self._restore()
        if self.iter > 0:
            self._at_step(iteration=self.iter)

    def after_fit(self) -> None:
        if self.pending is not None:  # every step was done before: the checkpoint's state is final
            self._restore()
        if not self.stopped and self.train_iter != self.saved_step:
            self._save(epoch=self.n_epoch, iteration=0)
        if not self.best_path.exists():  # stopped before the first validation: keep the last weights
            self.learn.save(self.best_path.stem, with_opt=False)

    def _at_step(self, iteration: int) -> None:
        """Between steps: save when due, and stop the fit at `max_steps`."""
        step = self.train_iter
        due = step % self.every == 0
        stop = self.max_steps is not None and step >= self.max_steps
        if (due or stop) and step != self.saved_step:
            self._save(epoch=self.epoch, iteration=iteration)
        if stop:
            self.stopped = True
            raise CancelFitException

    def _replay_epoch(self, row: list[float]) -> None:
        """Cancel a finished epoch, handing the recorder the row it recorded then."""
        recorder = self.learn.recorder
        recorder.cancel_train = recorder.cancel_valid = False
        recorder.start_epoch = time.time()
        recorder.log = L(self.epoch, *row)
        raise CancelEpochException

    def _save(self, epoch: int, iteration: int) -> None:
        step, rank = self.train_iter, rank_distrib()
        if rank == 0:
            open_checkpoint(self.root, step)
        distrib_barrier()
        partial = partial_folder(self.root, step)
        torch.save(rng_states(), partial / f"rng-{rank}.pth")
        if rank == 0:
            save_model(partial / LEARNER_FILE, self.model, self.opt)
            if getattr(self.learn, "scaler", None) is not None:  # fp16 on CUDA: the loss scale
                torch.save(self.learn.scaler.state_dict(), partial / SCALER_FILE)
            if self.best_path.exists():
                shutil.copyfile(self.best_path, partial / BEST_FILE)
            recorder = self.learn.recorder
            loader_state = self.loader_state if iteration else self.dls.train.rng.getstate()
            position = {
                "epoch": epoch,
                "iteration": iteration,
                "pct_train": float(self.pct_train),
                "loader_rng": [loader_state[0], list(loader_state[1]), loader_state[2]],
                "values": [[float(value) for value in row] for row in recorder.values],
                "smooth_loss": {"count": recorder.smooth_loss.count, "val": float(recorder.smooth_loss.val)},
                "best_valid_loss": float(self.learn.save_model.best),
            }
            seal_checkpoint(self.root, step, {**self.record, **position}, self.keep)
        distrib_barrier()
        self.saved_step = step

    def _restore(self) -> None:
        """Put every state of the saved position back; the replay ends here."""
        pending, folder = self.pending, self.resume
        load_model(folder / LEARNER_FILE, self.model, self.opt, with_opt=True, device=self.dls.device)
        if (folder / BEST_FILE).exists():
            shutil.copyfile(folder / BEST_FILE, self.best_path)
        else:
            self.best_path.unlink(missing_ok=True)
        if (folder / SCALER_FILE).exists() and getattr(self.learn, "scaler", None) is not None:
            self.learn.scaler.load_state_dict(torch.load(folder / SCALER_FILE, weights_only=True))
        recorder = self.learn.recorder
        recorder.values = [L(row) for row in pending["values"]]
        recorder.smooth_loss.count = pending["smooth_loss"]["count"]
        recorder.smooth_loss.val = torch.tensor(pending["smooth_loss"]["val"], dtype=torch.float32)
        self.learn.save_model.best = pending["best_valid_loss"]
        self.learn.train_iter, self.learn.pct_train = int(pending["step"]), pending["pct_train"]
        rank = rank_distrib()
        path = folder / f"rng-{rank}.pth"
        if not path.is_file():
            raise HistosynthError(f"{path}: missing; the checkpoint was saved by fewer processes")
        set_rng_states(torch.load(path, weights_only=True))
        self.pending = None


def rng_states() -> dict[str, Any]:
    """This process's RNG states as tensors and numbers (loadable with `weights_only=True`)."""
    version, keys, gauss = random.getstate()
    kind, mt, position, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [version, torch.tensor(keys, dtype=torch.int64), gauss],
        "numpy": [kind, torch.from_numpy(mt.astype(np.int64)), position, has_gauss, cached],
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what `rng_states` saved."""
    torch.set_rng_state(states["torch"])
    version, keys, gauss = states["python"]
    random.setstate((version, tuple(int(key) for key in keys.tolist()), gauss))
    kind, mt, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, mt.numpy().astype(np.uint32), position, has_gauss, cached))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def check_experiment_folder(out: Path, resume: bool) -> None:
    """Refuse an `--out` that is a file, or (without `--resume`) already holds an experiment.

    A fresh run would mix its models and checkpoints with the old ones; `--resume` continues
    them instead (and starts afresh where `out` holds nothing yet, so a job can always pass it).

    Raises:
        HistosynthError: naming the folder and the way out.
    """
    if out.exists() and not out.is_dir():
        raise HistosynthError(f"{out}: output path exists and is not a folder")
    held = [name for name in (EXPERIMENT_RECORD, MODELS, CHECKPOINTS) if (out / name).exists()]
    if held and not resume:
        raise HistosynthError(
            f"{out}: holds another experiment ({', '.join(held)}); pass --resume to continue it "
            "or choose another --out"
        )


def resume_checkpoint(
    root: Path, model: Path, record: dict[str, Any], options: ClassifierOptions, resume: bool, total: int
) -> Path | None:
    """The newest checkpoint of one (arm, seed) run to continue from, checked against this run.

    A run that finished its whole schedule has no checkpoints left (they are removed unless kept,
    `remove_checkpoints`); its model folder, which records the same facts, is checked instead.

    Args:
        root: the run's checkpoint folder.
        model: the run's model folder.
        record: this invocation's record of the run (`run_record`).
        options: this invocation's settings of the run.
        resume: `--resume`; without it the run starts afresh.
        total: the steps this invocation's run needs.

    Raises:
        HistosynthError: the run holds a model but no checkpoint, and is not finished; or its
            checkpoint (model) was made with other settings (named), caps, ImageNet weights or
            stain reference, on other classes or on pools whose fingerprint differs.
    """
    if not resume:
        return None
    found = step_folders(root)
    if found:
        checkpoint = found[-1][1]
        _check_same_run(read_run(checkpoint), checkpoint, record, options)
        return checkpoint
    if (model / INFO_NAME).exists():
        info = read_model_info(model, kinds=("classifier",))
        if "caps" not in info or info["steps"] < total:  # stopped early, or from before this check
            raise HistosynthError(
                f"{model}: holds a model but no checkpoint to resume from; choose another --out"
            )
        _check_same_run(info, model, record, options)
    return None


def _check_same_run(
    stored: dict[str, Any], where: Path, record: dict[str, Any], options: ClassifierOptions
) -> None:
    """Refuse to continue (or reuse) a run made with other settings, caps, weights, pools or classes."""
    changed = changed_settings(from_record(ClassifierOptions, stored["settings"]), options, RESUMABLE)
    changed += [flag for key, flag in RECORDED_FLAGS.items() if stored.get(key) != record[key]]
    if changed:
        raise HistosynthError(
            f"{where}: the run used other settings ({', '.join(changed)}); "
            "resume with the options it was started with"
        )
    check_resumable(stored, where, fingerprint=record["data_fingerprint"], classes=record["classes"])


def finished_fit(model: Path, checkpoint: Path | None, total: int) -> FitRecord | None:
    """The saved fit of a run that needs no more steps, or None when it must (still) train.

    A run is finished when its model folder was published after `total` steps (or more, under an
    earlier, larger `--max-steps`) and, where its checkpoints are kept, from the newest of them.
    Call it after `resume_checkpoint`, which checks that the model is this run's.
    """
    if not (model / INFO_NAME).is_file():
        return None
    info = read_model_info(model, kinds=("classifier",))
    step = info.get("steps") if checkpoint is None else int(read_run(checkpoint)["step"])
    if step < total or info.get("steps") != step:
        return None
    best = info["best_epoch"]
    return FitRecord(
        train_losses=info["train_losses"],
        valid_losses=info["valid_losses"],
        best_epoch=None if best is None else best - 1,
        steps=info["steps"],
    )


def remove_checkpoints(root: Path) -> None:
    """Delete a finished run's checkpoints, and the checkpoints folder once it is empty.

    They exist to continue an unfinished fit; a finished one is reused from its model folder,
    which holds everything `--resume` checks.
    """
    shutil.rmtree(root, ignore_errors=True)
    with contextlib.suppress(OSError):
        root.parent.rmdir()
