"""Training a class-conditional StyleGAN2 with ADA and a mode-collapse guard; loading it to sample.

Each optimizer step runs StyleGAN2's phases (Karras et al. 2020a, appendix B):

- G main: non-saturating logistic loss softplus(-D(A(G(z, c)), c)) with style mixing (with
  probability 0.9 the layers from a random cutoff take the style of a second z of the class);
- G regularisation, every `pl_interval` steps: path-length penalty
  (|J^T y|_2 - a)^2 x weight x interval on half a batch, a the running mean of the lengths;
- D main: softplus(D(A(G(z, c)), c)) + softplus(-D(A(x), c));
- D regularisation, every `r1_interval` steps: R1, gamma / 2 x |grad_x D(A(x), c)|^2 x interval.

A is adaptive discriminator augmentation (`trainer.stylegan2.augment`), its p steered by the
signs of D's real logits. The regularisation phases are their own Adam steps (lazy
regularisation), so both optimizers take the rate and betas times interval / (interval + 1).
Fake images take the labels of the real batch (the class frequencies of the data). After each
step the EMA generator (half-life in images) and the per-class mean of w move; the EMA
generator is the model's `generator/`, as StyleGAN samples from it.

Every random draw of step i comes from torch's generators seeded with
`derive_seed(seed, "stylegan2-step", i, rollbacks, process)`, and every state (both networks,
both optimizers, the EMA generator, ADA's p and r_t, the path-length mean) is in the
checkpoint, so a resumed run equals an uninterrupted one.

The collapse guard (`trainer.stylegan2.monitor`) runs before every checkpoint, so every saved
checkpoint passed it (and a fresh run saves step 0 first). When a check fails, the run rolls
back to the newest checkpoint, multiplies the learning rate by `rollback_lr_factor` and R1's
gamma by `rollback_gamma_factor` (the cures the paper's authors applied by hand), draws fresh
random numbers (the rollback count is in the seed) and goes on; each event is appended to the
run's record (`rollbacks` in each checkpoint and in `histosynth.json`) and to
`<out>/train-log.jsonl`, which also holds every check and ADA's p. After `max_rollbacks`
rollbacks a further collapse stops the run with a message saying what to do.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from histosynth.errors import HistosynthError
from histosynth.sampling import derive_seed
from trainer.core.checkpoints import checkpoint_folders, load_checkpoint, read_run, save_checkpoint
from trainer.core.data import TileDataset, read_training_pool
from trainer.core.loop import make_accelerator, resume_step, run_steps, total_steps
from trainer.core.model_folder import publish_model, read_model_info, write_model_info
from trainer.core.options import RunSettings, to_record
from trainer.stylegan2.augment import AdaptiveAugment
from trainer.stylegan2.monitor import CollapseMonitor, MonitorCheck, summary
from trainer.stylegan2.networks import StyleGAN2Discriminator, StyleGAN2Generator
from trainer.stylegan2.options import StyleGAN2Options, stylegan2_options

logger = logging.getLogger(__name__)

KIND = "stylegan2"
LOG_NAME = "train-log.jsonl"
PAD_TO = 8


class PathLengthMean(torch.nn.Module):
    """The running mean a of the path lengths (a buffer, so checkpoints carry it)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("value", torch.zeros(()))


class CollapseDetected(Exception):
    """Raised inside a step when the guard's check fails; carries the check."""

    def __init__(self, check: MonitorCheck) -> None:
        super().__init__(summary(check))
        self.check = check


def build_networks(
    options: StyleGAN2Options, num_classes: int
) -> tuple[StyleGAN2Generator, StyleGAN2Discriminator]:
    """Fresh generator and discriminator of the options' sizes."""
    generator = StyleGAN2Generator(
        num_classes=num_classes,
        resolution=options.size,
        z_dim=options.z_dim,
        w_dim=options.w_dim,
        embed_dim=options.embed_dim,
        mapping_layers=options.mapping_layers,
        channel_base=options.channel_base,
        channel_max=options.channel_max,
    )
    discriminator = StyleGAN2Discriminator(
        num_classes=num_classes,
        resolution=options.size,
        channel_base=options.channel_base,
        channel_max=options.channel_max,
        mbstd_group=options.mbstd_group,
    )
    return generator, discriminator


def lazy_adam(parameters: Any, rate: float, interval: int, options: StyleGAN2Options) -> torch.optim.Adam:
    """Adam with lazy regularisation's correction: rate x c and betas ** c, c = interval / (interval + 1)."""
    c = interval / (interval + 1)
    betas = (options.beta1**c, options.beta2**c)
    return torch.optim.Adam(parameters, lr=rate * c, betas=betas, eps=options.adam_eps)


def r1_penalty(
    discriminator: torch.nn.Module, augment: AdaptiveAugment, real: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Mean over images of |grad_x D(A(x), c)|^2 (R1 on the un-augmented reals, through A)."""
    real = real.detach().requires_grad_(True)
    logits = discriminator(augment(real), labels)
    (gradient,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    return gradient.square().sum(dim=(1, 2, 3)).mean() + every_parameter_used(logits)


def path_length_penalty(
    generator: torch.nn.Module, z: torch.Tensor, labels: torch.Tensor, mean: PathLengthMean, decay: float
) -> torch.Tensor:
    """(|J_w^T y| - a)^2 averaged, y ~ N(0, I) / sqrt(H W); moves the running mean a by `decay`."""
    images, ws = generator(z, labels, return_ws=True)
    y = torch.randn_like(images) / math.sqrt(images.shape[2] * images.shape[3])
    (gradient,) = torch.autograd.grad((images * y).sum(), ws, create_graph=True)
    lengths = gradient.square().sum(dim=2).mean(dim=1).sqrt()
    mean.value.copy_(mean.value.lerp(lengths.mean().detach(), decay))
    return (lengths - mean.value).square().mean() + every_parameter_used(images)


def every_parameter_used(output: torch.Tensor) -> torch.Tensor:
    """A zero that ties a penalty's backward to every parameter of the forward that made `output`.

    R1 and the path-length penalty differentiate a gradient, so parameters that only shift the
    output (the last biases) get no gradient from them. DistributedDataParallel waits for a
    gradient of every parameter it saw in the forward and fails the next step ("Expected to
    have finished reduction in the prior iteration"); adding 0 x output makes autograd send a
    zero to each of them, which changes no value.
    """
    return output.flatten()[0] * 0.0


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, beta: float) -> None:
    """ema = beta ema + (1 - beta) model for parameters; buffers (the w means) are copied."""
    for target, source in zip(ema.parameters(), model.parameters(), strict=True):
        target.lerp_(source.detach(), 1.0 - beta)
    for target, source in zip(ema.buffers(), model.buffers(), strict=True):
        target.copy_(source)


@dataclass(frozen=True)
class StyleGAN2Settings(RunSettings):
    """How `train_stylegan2` runs; each field is the CLI option of that name.

    Attributes:
        options: what is trained (`stylegan2_options`, e.g. `stylegan2_options("paper", max_steps=100)`);
            default: the tiny preset.
    """

    options: StyleGAN2Options = field(default_factory=stylegan2_options)


def train_stylegan2(data: str | Path, out: str | Path, settings: StyleGAN2Settings | None = None) -> Path:
    """Train a class-conditional StyleGAN2 (ADA, collapse guard) on a pool; save a model folder.

    Args:
        data: the training pool `<pool>/<CLASS>/<image>`; its classes become the labels.
        out: the model folder (`generator/` with the EMA weights, `discriminator/`,
            `histosynth.json`, `train-log.jsonl`, `checkpoints/`).
        settings: the run (`StyleGAN2Settings`; default: the tiny preset).

    Returns:
        The model folder.

    Raises:
        HistosynthError: bad pool, settings, out folder or resume; or mode collapse that
            `max_rollbacks` rollbacks did not cure (checkpoints stay; no model is written).
    """
    settings = settings or StyleGAN2Settings()
    options, progress, classes, resume = (
        settings.options,
        settings.progress,
        settings.classes,
        settings.resume,
    )
    out = Path(out).expanduser()
    pool = read_training_pool(data, classes, fingerprint=options.fingerprint, progress=progress)
    accelerator = make_accelerator(options)
    device = accelerator.device
    torch.manual_seed(derive_seed(options.seed, "stylegan2-init"))
    generator, discriminator = build_networks(options, len(pool.classes))
    ema = copy.deepcopy(generator).eval().requires_grad_(False)
    augment = AdaptiveAugment(
        target=options.ada_target,
        interval=options.ada_interval,
        speed_images=options.ada_speed,
        enabled=options.augment,
    )
    pl_mean = PathLengthMean()
    rate = options.learning_rate
    g_optimizer = lazy_adam(generator.parameters(), rate, options.pl_interval, options)
    d_optimizer = lazy_adam(discriminator.parameters(), rate, options.r1_interval, options)
    generator, discriminator, g_optimizer, d_optimizer = accelerator.prepare(
        generator, discriminator, g_optimizer, d_optimizer
    )
    for part in (ema, augment, pl_mean):
        part.to(device)
        accelerator.register_for_checkpointing(part)
    run: dict[str, Any] = {"kind": KIND, "settings": to_record(options), "classes": pool.classes}
    run["data_fingerprint"] = pool.fingerprint
    start = resume_step(accelerator, out, resume, options, run)
    folders = checkpoint_folders(out)
    run["rollbacks"] = list(read_run(folders[-1][1]).get("rollbacks", [])) if folders else []
    if not folders:
        save_checkpoint(accelerator, out, 0, run, options.keep_checkpoints)
    monitor = CollapseMonitor(
        pool,
        options.size,
        options.z_dim,
        samples=options.monitor_samples,
        seed=options.seed,
        min_diversity=options.min_diversity,
        max_gap=options.max_gap,
        start=options.monitor_start,
    )
    total = total_steps(options, len(pool.files), accelerator.num_processes)
    images_per_step = options.batch_size * accelerator.num_processes
    ema_beta = 0.5 ** (images_per_step / options.ema_half_life) if options.ema_half_life > 0 else 0.0
    plain_generator = accelerator.unwrap_model(generator)
    log_path = out / LOG_NAME

    def current() -> tuple[float, float]:
        """Learning rate and R1 gamma after the rollbacks so far."""
        count = len(run["rollbacks"])
        return (
            rate * options.rollback_lr_factor**count,
            options.r1_gamma * options.rollback_gamma_factor**count,
        )

    def apply_rates() -> None:
        learning_rate, _ = current()
        for optimizer, interval in ((g_optimizer, options.pl_interval), (d_optimizer, options.r1_interval)):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate * interval / (interval + 1)

    def write_log(event: dict[str, Any]) -> None:
        if accelerator.is_main_process:
            stamped = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), **event}
            with log_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(stamped) + "\n")

    def step(images: torch.Tensor, labels: torch.Tensor, index: int) -> float:
        torch.manual_seed(
            derive_seed(
                options.seed, "stylegan2-step", index, len(run["rollbacks"]), accelerator.process_index
            )
        )
        batch = images.shape[0]
        _, gamma = current()
        mix_cutoff = None
        if torch.rand(()) < options.style_mixing:
            mix_cutoff = int(torch.randint(1, plain_generator.num_ws, ()))

        z = torch.randn(batch, options.z_dim, device=device)
        mix = torch.randn(batch, options.z_dim, device=device) if mix_cutoff else None
        fake = generator(z, labels, mix_z=mix, mix_cutoff=mix_cutoff)
        g_loss = F.softplus(-discriminator(augment(fake), labels)).mean()
        g_optimizer.zero_grad(set_to_none=True)
        accelerator.backward(g_loss)
        g_optimizer.step()
        if options.pl_weight > 0 and index % options.pl_interval == 0:
            count = max(1, batch // options.pl_batch_shrink)
            pl_z = torch.randn(count, options.z_dim, device=device)
            penalty = path_length_penalty(generator, pl_z, labels[:count], pl_mean, options.pl_decay)
            g_optimizer.zero_grad(set_to_none=True)
            accelerator.backward(penalty * options.pl_weight * options.pl_interval)
            g_optimizer.step()
        plain_generator.update_w_avg(z, labels)

        with torch.no_grad():
            z = torch.randn(batch, options.z_dim, device=device)
            mix = torch.randn(batch, options.z_dim, device=device) if mix_cutoff else None
            fake = generator(z, labels, mix_z=mix, mix_cutoff=mix_cutoff)
        real_logits = discriminator(augment(images), labels)
        fake_logits = discriminator(augment(fake), labels)
        d_loss = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
        d_optimizer.zero_grad(set_to_none=True)
        accelerator.backward(d_loss)
        d_optimizer.step()
        augment.accumulate(real_logits)
        monitor.record_logits(real_logits, fake_logits)
        if gamma > 0 and index % options.r1_interval == 0:
            penalty = r1_penalty(discriminator, augment, images, labels)
            d_optimizer.zero_grad(set_to_none=True)
            accelerator.backward(penalty * (gamma / 2) * options.r1_interval)
            d_optimizer.step()

        update_ema(ema, plain_generator, ema_beta)
        if (index + 1) % options.ada_interval == 0:
            for total_of in (augment.sign_sum, augment.sign_count):  # r_t over every process's images
                total_of.copy_(accelerator.reduce(total_of.clone(), "sum"))
            augment.adjust(images_per_step)
        done = index + 1
        if done % options.checkpoint_every == 0 or done == total:
            check = monitor.check(plain_generator, done, device)
            check = broadcast_object_list([check])[0]  # all processes act on the main one's verdict
            learning_rate, gamma = current()
            write_log(
                {
                    "event": "check",
                    **check.to_record(),
                    "augment_p": float(augment.p),
                    "learning_rate": learning_rate,
                    "r1_gamma": gamma,
                }
            )
            logger.info("%s; ADA p %.3f", summary(check), float(augment.p))
            if check.collapsed:
                raise CollapseDetected(check)
        return float(g_loss.detach() + d_loss.detach())

    apply_rates()
    generator.train()
    discriminator.train()
    dataset = TileDataset(pool, options.size, options.seed)
    while True:
        try:
            done = run_steps(
                accelerator,
                dataset,
                options,
                out=out,
                start=start,
                step=step,
                run=run,
                description="train stylegan2",
                progress=progress,
            )
            break
        except CollapseDetected as collapse:
            start = roll_back(accelerator, out, options, run, collapse.check, write_log, current)
            apply_rates()
            monitor.reset_gap()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:

        def write(staging: Path) -> None:
            ema.save_pretrained(staging / "generator")
            accelerator.unwrap_model(discriminator).save_pretrained(staging / "discriminator")

        publish_model(out, write)
        learning_rate, gamma = current()
        write_model_info(
            out,
            kind=KIND,
            classes=pool.classes,
            settings={**to_record(options), "effective_learning_rate": rate},
            fingerprint=pool.fingerprint,
            steps=done,
            extra={
                "augment_p": float(augment.p),
                "rollbacks": run["rollbacks"],
                "final_learning_rate": learning_rate,
                "final_r1_gamma": gamma,
                "run_log": LOG_NAME,
                "num_processes": accelerator.num_processes,
                "generator": "EMA weights (half-life in images: ema_half_life)",
            },
        )
    accelerator.wait_for_everyone()
    return out


def roll_back(
    accelerator: Accelerator,
    out: Path,
    options: StyleGAN2Options,
    run: dict[str, Any],
    check: MonitorCheck,
    write_log: Callable[[dict[str, Any]], None],
    current: Callable[[], tuple[float, float]],
) -> int:
    """Restore the newest (good) checkpoint after a failed check and record the event.

    Args:
        accelerator: holds the prepared networks, optimizers and registered states.
        out: the run's folder.
        options: the run's settings (`max_rollbacks`, the factors).
        run: the run's record; the event is appended to its `rollbacks`.
        check: the failed check.
        write_log: appends an event to the run log.
        current: the learning rate and R1 gamma in force before this rollback.

    Returns:
        The step of the checkpoint restored.

    Raises:
        HistosynthError: the run already used its `max_rollbacks` rollbacks (giving up).
    """
    step, folder = checkpoint_folders(out)[-1]
    learning_rate, gamma = current()
    if len(run["rollbacks"]) >= options.max_rollbacks:
        write_log({"event": "give-up", **check.to_record(), "last_good_checkpoint": folder.name})
        raise HistosynthError(
            f"{out}: mode collapse at step {check.step} ({'; '.join(check.reasons)}) persisted after "
            f"{len(run['rollbacks'])} rollback(s) (learning rate now {learning_rate:g}, R1 gamma {gamma:g}); "
            f"no model was written; the last good checkpoint is {folder}: continue with --resume and a "
            "higher --max-rollbacks, or start a new run with a lower --learning-rate or a higher --r1-gamma"
        )
    load_checkpoint(accelerator, folder)
    event = {
        "detected_at": check.step,
        "rolled_back_to": step,
        "reasons": check.reasons,
        "learning_rate": learning_rate * options.rollback_lr_factor,
        "r1_gamma": gamma * options.rollback_gamma_factor,
    }
    run["rollbacks"].append(event)
    write_log({"event": "rollback", **event})
    logger.warning(
        "mode collapse at step %d (%s): rolled back to step %d with learning rate %g and R1 gamma %g",
        check.step,
        "; ".join(check.reasons),
        step,
        event["learning_rate"],
        event["r1_gamma"],
    )
    return step


def load_stylegan2(folder: str | Path, device: torch.device) -> StyleGAN2Generator:
    """The EMA generator of a StyleGAN2 model folder, on `device`, for sampling.

    Raises:
        HistosynthError: no `histosynth.json`, another kind of model, or no `generator/`.
    """
    folder = Path(folder).expanduser()
    read_model_info(folder, [KIND])
    try:
        generator = StyleGAN2Generator.from_pretrained(folder / "generator")
    except OSError as error:
        raise HistosynthError(f"{folder}: incomplete model folder ({error})") from error
    return generator.to(device).eval().requires_grad_(False)


@torch.no_grad()
def generate_images(
    generator: StyleGAN2Generator,
    labels: list[int],
    generators: list[torch.Generator],
    truncation: float = 1.0,
) -> np.ndarray:
    """(B, H, W, 3) uint8 images; image b draws z, then each layer's noise, from `generators[b]` (CPU).

    Batches are padded to a multiple of `PAD_TO` with zero inputs, so on CPU an image's
    arithmetic does not depend on its companions or the batch size.
    """
    device = generator.device
    count = len(generators)
    padding = -count % PAD_TO
    z = [torch.randn(generator.config.z_dim, generator=g) for g in generators]
    noise = [[torch.randn(shape, generator=g) for g in generators] for shape in generator.noise_shapes()]
    z_batch = torch.stack(z + [torch.zeros(generator.config.z_dim)] * padding).to(device)
    noise_batch = [torch.stack(layer + [torch.zeros_like(layer[0])] * padding).to(device) for layer in noise]
    label_batch = torch.tensor(list(labels) + [0] * padding, device=device)
    images = generator(z_batch, label_batch, truncation=truncation, noise=noise_batch)[:count]
    images = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).cpu().numpy()
