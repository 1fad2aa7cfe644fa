"""The global batch: one preset is the same run on 1 GPU or 8, with or without gradient accumulation.

The equivalence is checked by brute force in one process: the diffusion step of a 2-process run is
computed as each of the two processes would (its rows of the batch, its plan), and the average of
their updates (what DDP's all-reduce gives) must equal the 1-process update; so must the update in
micro-batches. The resume check registers a state that records where it was moved.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from accelerate import Accelerator

from histosynth.errors import HistosynthError
from trainer.core.batches import BatchPlan
from trainer.core.checkpoints import save_checkpoint
from trainer.core.loop import plain_model, register_states, restore_checkpoint, total_steps
from trainer.core.options import effective_learning_rate
from trainer.diffusion.denoising import Denoiser, DenoiserTraining, training_scheduler
from trainer.diffusion.ldm import ClassEmbedder, build_unet
from trainer.diffusion.options import LDMOptions


def test_a_plan_shares_the_global_batch_evenly_or_says_why_not() -> None:
    plan = BatchPlan(8, processes=2, process_index=1, micro_size=2)
    assert (plan.per_process, plan.accumulation, plan.rows) == (4, 2, slice(4, 8))
    assert plan.micro_rows() == [slice(0, 2), slice(2, 4)] and plan.micro_rows(3) == [
        slice(0, 2),
        slice(2, 3),
    ]
    assert BatchPlan(8).micro_rows() == [slice(0, 8)]
    with pytest.raises(HistosynthError) as uneven:
        BatchPlan(10, processes=4)
    assert str(uneven.value) == (
        "--batch-size 10: the global batch does not split evenly over 4 processes "
        "(it does over 1, 2, 5, 10); choose a multiple of 4"
    )
    with pytest.raises(HistosynthError, match=r"--per-device-batch-size 3: must divide .* = 4\)"):
        BatchPlan(8, processes=2, micro_size=3)
    with pytest.raises(HistosynthError, match="--per-device-batch-size 0: must be at least 1"):
        LDMOptions(per_device_batch_size=0)


def test_length_and_rate_do_not_depend_on_the_number_of_processes() -> None:
    options = LDMOptions(batch_size=64, learning_rate=1e-6, epochs=30)
    assert effective_learning_rate(options) == pytest.approx(6.4e-5)  # base x global batch
    assert total_steps(options, 100_000) == 30 * (100_000 // 64)  # whatever runs it
    with pytest.raises(HistosynthError, match="fewer than one batch of 64; lower --batch-size"):
        total_steps(options, 63)


def _training(plan: BatchPlan, denoiser: Denoiser) -> DenoiserTraining:
    """A diffusion step's machinery around `denoiser`, with plain SGD at rate 1: the update is -grad."""
    options = LDMOptions(batch_size=plan.global_size, cond_drop=0.5, seed=3)
    optimizer = torch.optim.SGD(denoiser.parameters(), lr=1.0)
    return DenoiserTraining(
        accelerator=Accelerator(cpu=True),
        denoiser=denoiser,
        optimizer=optimizer,
        lr_schedule=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0),
        noise_schedule=training_scheduler(1000, 0.0015, 0.0195),
        cache=SimpleNamespace(kind="kl-autoencoder"),
        scaling_factor=0.5,
        null_class=2,
        seed_name="ldm-step",
        options=options,
        rate=1.0,
        plan=plan,
    )


def _update(plan: BatchPlan, denoiser: Denoiser, moments: torch.Tensor, labels: torch.Tensor) -> list:
    """The parameter change of step 5 on `moments` (the rows this plan's process gets)."""
    model = copy.deepcopy(denoiser)
    before = [p.detach().clone() for p in model.parameters()]
    _training(plan, model).step(moments, labels, 5)
    return [p.detach() - b for p, b in zip(model.parameters(), before, strict=True)]


def test_two_processes_and_micro_batches_make_the_one_process_step() -> None:
    torch.manual_seed(0)
    options = LDMOptions()
    denoiser = Denoiser(build_unet(options, 4, 8), ClassEmbedder(2, options.class_embed_dim))
    moments = torch.cat([torch.randn(4, 4, 8, 8), torch.rand(4, 4, 8, 8) * 0.1], dim=1)  # mean, std
    labels = torch.tensor([0, 1, 1, 0])
    alone = _update(BatchPlan(4), denoiser, moments, labels)
    shares = [
        _update(
            BatchPlan(4, processes=2, process_index=p),
            denoiser,
            moments[2 * p : 2 * p + 2],
            labels[2 * p : 2 * p + 2],
        )
        for p in (0, 1)
    ]
    all_reduced = [(a + b) / 2 for a, b in zip(*shares, strict=True)]  # DDP averages the gradients
    accumulated = _update(BatchPlan(4, micro_size=1), denoiser, moments, labels)
    assert max(float(a.abs().max()) for a in alone) > 1e-4  # the step moved the weights
    for other in (all_reduced, accumulated):
        for a, b in zip(alone, other, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # the draws are the global batch's: another split of the same rows would differ without that
    other_seed = _update(BatchPlan(4), denoiser, moments.flip(0), labels.flip(0))
    assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(alone, other_seed, strict=True))


class _RecordedState:
    """A registered state that remembers the device it was last moved to."""

    def __init__(self) -> None:
        self.value = torch.zeros(2)
        self.moved_to: torch.device | None = None

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"].to("cpu")  # as accelerate and diffusers' EMAModel leave it

    def to(self, device: torch.device) -> _RecordedState:
        self.moved_to = torch.device(device)
        self.value = self.value.to(device)
        return self


def test_a_restored_state_is_put_back_on_the_runs_device(tmp_path) -> None:
    accelerator = Accelerator(cpu=True)
    state = _RecordedState()
    state.value += 7
    register_states(accelerator, state)
    folder = save_checkpoint(accelerator, tmp_path, 1, {"step": 1}, keep=2)
    state.value.zero_()
    assert restore_checkpoint(accelerator, folder)["step"] == 1
    assert state.value.tolist() == [7.0, 7.0] and state.moved_to == accelerator.device


def test_compile_goes_to_accelerate_and_stylegan2_refuses_it() -> None:
    # the settings, not an Accelerator: accelerate keeps one state per process, and a compiling
    # one would compile every later test's models in this worker
    from trainer.core.loop import accelerator_settings
    from trainer.stylegan2.options import stylegan2_options

    assert accelerator_settings(LDMOptions(compile_model=True))["dynamo_backend"] == "inductor"
    assert accelerator_settings(LDMOptions())["dynamo_backend"] == "no"
    assert accelerator_settings(LDMOptions())["mixed_precision"] == (
        "bf16" if torch.cuda.is_available() else "no"
    )
    timeout = accelerator_settings(LDMOptions())["kwargs_handlers"][0].timeout
    assert timeout.total_seconds() == 2 * 3600
    with pytest.raises(HistosynthError, match="^--compile: R1 and the path-length penalty"):
        stylegan2_options("tiny", compile_model=True)


def test_the_plain_network_of_a_compiled_ddp_model_leaves_the_model_as_prepared(tmp_path) -> None:
    """accelerate prepares `--compile` on several GPUs as compile(DDP(network)); taking the network
    out (to save it, to read its last layer) must not take DDP out of the prepared model, or the
    gradients are no longer all-reduced and the checkpoint keys change."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", world_size=1, rank=0)
    try:
        network = torch.nn.Linear(3, 2)
        prepared = torch.compile(torch.nn.parallel.DistributedDataParallel(network))  # compiled lazily
        keys = list(prepared.state_dict())
        assert plain_model(Accelerator(cpu=True), prepared) is network
        assert isinstance(prepared._orig_mod, torch.nn.parallel.DistributedDataParallel)
        assert list(prepared.state_dict()) == keys == ["_orig_mod.module.weight", "_orig_mod.module.bias"]
    finally:
        dist.destroy_process_group()
