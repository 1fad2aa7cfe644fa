"""What every `train` command shares: the run's settings, presets, and how a run is recorded.

A run is described by one frozen dataclass: the options every `train` command shares
(`TrainOptions`) extended by the model family's own (`trainer.autoencoder.options`,
`trainer.diffusion.options`, `trainer.stylegan2.options`, `trainer.classifier.options`). A family's
presets (`paper`, `tiny`) fill every field; the command line overrides a few by name (`resolve`).
The settings check themselves when they are made (`__post_init__`), so a value out of range is
refused whether it came from a preset, the command line, `dataclasses.replace` or a record. The
resolved settings are written into `histosynth.json` and into each checkpoint, so a model folder
says exactly how it was made and `--resume` can refuse a run whose settings changed.

`batch_size` is the global batch: the images of one optimizer step over all processes
(`trainer.core.batches`), so a preset is the same run on 1 GPU or 8, with the same number of
steps. Learning rates follow CompVis `main.py`: a preset's base rate is multiplied by the global
batch (CompVis: batch per GPU x GPUs x gradient accumulation). The paper states its batch sizes
(autoencoders 10, diffusion 64, SD 16, StyleGAN2 64) without saying whether per GPU; the presets
take them as global, which is what lets the KL autoencoder's 10 epochs of NCT-CRC-HE-100K (100k
steps at batch 10) reach CompVis' `disc_start` of 50,001 half-way, as its schedule intends; so
the autoencoders run at 4.5e-6 x 10 = 4.5e-5 and the diffusion model at 1e-6 x 64 = 6.4e-5. A
user who reads the paper's sizes as per GPU on its two GPUs passes `--batch-size 20` (or 128).
`--no-scale-lr` takes the rate as given.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from histosynth.errors import HistosynthError

PRESETS = ("paper", "tiny")
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
# How a training pool is fingerprinted (`trainer.core.data.pool_fingerprint`): by relative names and
# byte sizes (one `stat` per file), or by the sha256 of every file (which also sees an edited pixel).
FINGERPRINTS = ("names", "sha256")
# The paper presets' data-loading workers: enough to keep a GPU fed, no more than the machine has.
PAPER_WORKERS = min(8, os.cpu_count() or 1)


@dataclass(frozen=True)
class TrainOptions:
    """What every `train` command shares.

    Attributes:
        preset: `paper` or `tiny`, the preset the other fields started from.
        seed: seeds the data order, the rotations and every noise draw (`histosynth.sampling`).
        epochs: passes over the training pool.
        max_steps: stop after this many optimizer steps in total, counting those before a
            resume; None runs all epochs.
        batch_size: images per optimizer step over all processes (the global batch), split
            evenly over them.
        per_device_batch_size: images per forward/backward pass on each process, where a
            process's share of the batch does not fit in memory (gradient accumulation);
            None: the whole share in one pass.
        learning_rate: the base rate; see `effective_learning_rate`.
        scale_lr: multiply by the global batch, as CompVis `main.py` does by default.
        lr_warmup_steps: linear warm-up of the rate (0 in the paper: constant rate).
        size: tiles are resized bilinearly to size x size (256 in the paper: 224 -> 256).
        checkpoint_every: save a resumable checkpoint every this many steps (and at the end).
        keep_checkpoints: how many of the newest checkpoints to keep.
        mixed_precision: `auto` (bf16 on a GPU that has it, else fp16; none on CPU), `no`,
            `fp16` or `bf16`.
        num_workers: data-loading worker processes.
        compile_model: `torch.compile` the prepared networks (accelerate's inductor backend):
            faster steps on a GPU after a first step that compiles.
        fingerprint: `names` or `sha256`: how the training pool is fingerprinted for the
            model folder and compared on `--resume`.
    """

    preset: str = "tiny"
    seed: int = 0
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 2
    per_device_batch_size: int | None = None
    learning_rate: float = 1e-4
    scale_lr: bool = True
    lr_warmup_steps: int = 0
    size: int = 32
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    mixed_precision: str = "auto"
    num_workers: int = 0
    compile_model: bool = False
    fingerprint: str = "names"

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Refuse settings out of range; a family's options extend this with their own fields.

        Raises:
            HistosynthError: naming the option and its value.
        """
        positive = ["epochs", "batch_size", "size", "checkpoint_every", "keep_checkpoints"]
        for name in positive:
            if getattr(self, name) < 1:
                raise HistosynthError(f"{_flag(name)} {getattr(self, name)}: must be at least 1")
        for name in ("max_steps", "per_device_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise HistosynthError(f"{_flag(name)} {getattr(self, name)}: must be at least 1")
        if self.learning_rate <= 0:
            raise HistosynthError(f"--learning-rate {self.learning_rate}: must be positive")
        if self.preset not in PRESETS:
            raise HistosynthError(f"--preset {self.preset!r}: expected one of {', '.join(PRESETS)}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise HistosynthError(
                f"--mixed-precision {self.mixed_precision!r}: expected one of {', '.join(MIXED_PRECISION)}"
            )
        if self.fingerprint not in FINGERPRINTS:
            raise HistosynthError(
                f"--fingerprint {self.fingerprint!r}: expected one of {', '.join(FINGERPRINTS)}"
            )
        if self.size % 8:
            raise HistosynthError(f"--size {self.size}: must be a multiple of 8 (f=8 autoencoders)")


@dataclass(frozen=True)
class RunSettings:
    """How a `train_*` front door runs, beside what it trains (its family's `options` field).

    Each family's settings (e.g. `trainer.diffusion.train_ldm.LDMSettings`) extend this with
    `options` and whatever else its command takes; each field is the CLI option of that name.

    Attributes:
        resume: continue the run in `out` from its newest checkpoint.
        classes: the classes to train on (default: all), recorded in label order.
        progress: show progress bars (None: when stderr is a terminal).
    """

    _: dataclasses.KW_ONLY  # keyword-only, so that a family's `options` comes first in its settings
    resume: bool = False
    classes: tuple[str, ...] | None = None
    progress: bool | None = None


OptionsT = TypeVar("OptionsT", bound=TrainOptions)


def resolve(
    cls: type[OptionsT], preset: str, presets: Mapping[str, Mapping[str, Any]], **overrides: Any
) -> OptionsT:
    """Settings of `cls` from a preset, with the non-None `overrides` replacing preset values.

    Args:
        cls: a family's `TrainOptions` subclass (e.g. `trainer.diffusion.options.LDMOptions`).
        preset: `paper` or `tiny`.
        presets: the family's preset table, preset name -> field values (e.g.
            `trainer.diffusion.options.LDM_PRESETS`).
        overrides: field values from the command line; None means "the preset's".

    Raises:
        HistosynthError: an unknown preset or field, or a value out of range.
    """
    if preset not in PRESETS:
        raise HistosynthError(f"--preset {preset!r}: expected one of {', '.join(PRESETS)}")
    values = dict(presets[preset])
    names = {item.name for item in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise HistosynthError(f"unknown setting {unknown[0]!r}")
    values.update({name: value for name, value in overrides.items() if value is not None})
    return cls(**{"preset": preset, **values})


def effective_learning_rate(options: TrainOptions) -> float:
    """The optimizer's rate: base x global batch when `scale_lr` (CompVis `main.py`), whatever
    the number of processes."""
    if not options.scale_lr:
        return options.learning_rate
    return options.learning_rate * options.batch_size


def learning_rate_rule(options: TrainOptions) -> str:
    """How `effective_learning_rate` made the optimizer's rate, in words for `histosynth.json`."""
    return "base x global batch size (CompVis main.py)" if options.scale_lr else "as given"


def to_record(options: TrainOptions) -> dict[str, Any]:
    """The settings as JSON-ready values (tuples become lists)."""
    return {key: list(value) if isinstance(value, tuple) else value for key, value in _items(options)}


def from_record(cls: type[OptionsT], record: dict[str, Any]) -> OptionsT:
    """Rebuild settings written by `to_record` (lists become tuples again)."""
    names = {item.name: item for item in dataclasses.fields(cls)}
    values = {key: tuple(value) if isinstance(value, list) else value for key, value in record.items()}
    return cls(**{key: value for key, value in values.items() if key in names})


# Settings that may change between a run and its resume without changing its result
# (`max_rollbacks`: StyleGAN2's collapse guard may be given more tries after it gave up).
RESUMABLE_CHANGES = (
    "epochs",
    "max_steps",
    "checkpoint_every",
    "keep_checkpoints",
    "num_workers",
    "max_rollbacks",
    # a memory setting: a diffusion step is the same in one pass or several; the autoencoder's
    # adaptive weight and StyleGAN2's path-length mean follow each pass (as under CompVis' and
    # NVIDIA's accumulation), so those runs change slightly with it
    "per_device_batch_size",
)


def changed_settings(
    before: TrainOptions, after: TrainOptions, allowed: Sequence[str] = RESUMABLE_CHANGES
) -> list[str]:
    """Fields whose values differ, other than those a resume may change (`allowed`).

    A model whose schedule spans the whole run (the classifier's one-cycle rate) passes
    `allowed` without `epochs`, since more epochs would change every step already taken.
    """
    old, new = dict(_items(before)), dict(_items(after))
    return [key for key in old if key not in allowed and old[key] != new.get(key)]


def _items(options: TrainOptions) -> list[tuple[str, Any]]:
    return [(item.name, getattr(options, item.name)) for item in dataclasses.fields(options)]


def _flag(name: str) -> str:
    """The command-line flag of a field: `batch_size` -> `--batch-size`."""
    return f"--{name.replace('_', '-')}"
