"""One optimizer step's batch: global, split over the processes, and over micro-batches in each.

A preset's `batch_size` is the global batch, the images one optimizer step learns from, however
many GPUs share it: so the learning rate (base x global batch, the CompVis rule), the number of
steps in an epoch and a step count such as `disc_start` mean the same on 1 GPU and on 8. Each
process takes an equal, contiguous slice of the global batch (`epoch_batches` hands it those
tiles); where its slice does not fit in memory, `per_device_batch_size` cuts it into
micro-batches whose gradients add up before the one optimizer step (`accumulate_backward`), with
DDP's all-reduce only after the last. DDP averages the processes' gradients, so with equal slices
the step is the gradient of the global batch's mean loss, as on one device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from torch import nn

from histosynth.errors import HistosynthError


@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step's global batch is shared out.

    Attributes:
        global_size: images per optimizer step, over all processes.
        processes: processes (GPUs) sharing each step.
        process_index: this process's rank.
        micro_size: images per forward/backward pass on this process.
    """

    global_size: int
    processes: int = 1
    process_index: int = 0
    micro_size: int | None = None

    def __post_init__(self) -> None:
        if self.global_size % self.processes:
            fits = ", ".join(str(n) for n in range(1, self.global_size + 1) if self.global_size % n == 0)
            raise HistosynthError(
                f"--batch-size {self.global_size}: the global batch does not split evenly over "
                f"{self.processes} processes (it does over {fits}); choose a multiple of {self.processes}"
            )
        micro = self.micro
        if micro < 1 or self.per_process % micro:
            raise HistosynthError(
                f"--per-device-batch-size {micro}: must divide each process's share of the batch "
                f"({self.global_size} / {self.processes} processes = {self.per_process})"
            )

    @property
    def per_process(self) -> int:
        """This process's slice of each global batch."""
        return self.global_size // self.processes

    @property
    def micro(self) -> int:
        """Images per forward/backward pass (the whole slice without `micro_size`)."""
        return self.per_process if self.micro_size is None else self.micro_size

    @property
    def accumulation(self) -> int:
        """Micro-batches per optimizer step on each process."""
        return self.per_process // self.micro

    @property
    def rows(self) -> slice:
        """This process's rows of a tensor drawn for the whole global batch."""
        start = self.process_index * self.per_process
        return slice(start, start + self.per_process)

    def micro_rows(self, count: int | None = None) -> list[slice]:
        """The micro-batches' rows of this process's slice (or of its first `count` rows)."""
        count = self.per_process if count is None else count
        return [slice(start, min(start + self.micro, count)) for start in range(0, count, self.micro)]


def batch_plan(global_size: int, per_device: int | None, accelerator: Accelerator) -> BatchPlan:
    """The run's `BatchPlan` on `accelerator`'s processes.

    Raises:
        HistosynthError: the global batch does not split evenly over the processes, or
            `per_device` does not divide a process's share.
    """
    return BatchPlan(global_size, accelerator.num_processes, accelerator.process_index, per_device)


def accumulate_backward(
    accelerator: Accelerator,
    models: Sequence[nn.Module],
    parts: Sequence[slice],
    loss_of: Callable[[slice], torch.Tensor],
) -> torch.Tensor:
    """Backpropagate the mean loss over the rows `parts` cover, one part at a time.

    Args:
        accelerator: runs the backward pass (with its gradient scaler under fp16).
        models: the (wrapped) models whose gradients DDP would all-reduce; they synchronise
            only in the last part's backward.
        parts: contiguous row ranges from 0 (`BatchPlan.micro_rows`).
        loss_of: the mean loss over the given rows.

    Returns:
        The mean loss over all the rows, detached (what a single pass would give).
    """
    count = parts[-1].stop
    total = torch.zeros((), device=accelerator.device)
    for index, rows in enumerate(parts):
        weight = (rows.stop - rows.start) / count
        with contextlib.ExitStack() as stack:
            if index < len(parts) - 1:
                for model in models:
                    stack.enter_context(accelerator.no_sync(model))
            loss = loss_of(rows)
            accelerator.backward(loss * weight)
        total = total + loss.detach().float() * weight
    return total


@contextlib.contextmanager
def training_only(
    accelerator: Accelerator, active: nn.Module, inactive: nn.Module
) -> Iterator[tuple[nn.Module]]:
    """A phase of an adversarial step that trains `active` alone: `inactive` is frozen, so no
    gradient of its weights is computed (the loss still flows through it to its inputs) and its
    forward prepares no all-reduce (DDP's `no_sync`); yields the networks whose gradients the
    phase synchronises, for `accumulate_backward`. The frozen flags are restored afterwards."""
    trainable = [parameter.requires_grad for parameter in inactive.parameters()]
    inactive.requires_grad_(False)
    try:
        with accelerator.no_sync(inactive):
            yield (active,)
    finally:
        for parameter, flag in zip(inactive.parameters(), trainable, strict=True):
            parameter.requires_grad_(flag)
