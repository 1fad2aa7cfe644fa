"""Training a class-conditional StyleGAN2 with ADA and a mode-collapse guard.

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

import contextlib
import copy
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate.utils import broadcast_object_list

from histosynth.errors import HistosynthError
from histosynth.sampling import derive_seed
from trainer.core.batches import accumulate_backward, training_only
from trainer.core.checkpoints import checkpoint_folders, read_run, save_checkpoint
from trainer.core.data import TileDataset, TrainingPool, read_training_pool
from trainer.core.loop import (
    batch_record,
    in_memory_format,
    make_accelerator,
    plain_model,
    publish_on_main_process,
    register_states,
    restore_checkpoint,
    resume_step,
    run_plan,
    run_record,
    run_steps,
    total_steps,
)
from trainer.core.options import RunSettings, to_record
from trainer.stylegan2.augment import AdaptiveAugment
from trainer.stylegan2.losses import (
    PathLengthMean,
    keep_gradient_layout,
    lazy_adam,
    path_length_penalty,
    r1_penalty,
    update_ema,
)
from trainer.stylegan2.monitor import CollapseMonitor, MonitorCheck, summary
from trainer.stylegan2.networks import build_networks
from trainer.stylegan2.options import StyleGAN2Options, stylegan2_options
from trainer.stylegan2.sampling import KIND

logger = logging.getLogger(__name__)

LOG_NAME = "train-log.jsonl"


class CollapseDetected(Exception):
    """Raised inside a step when the guard's check fails; carries the check."""

    def __init__(self, check: MonitorCheck) -> None:
        super().__init__(summary(check))
        self.check = check


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
    options = settings.options
    out = Path(out).expanduser()
    pool = read_training_pool(
        data, settings.classes, fingerprint=options.fingerprint, progress=settings.progress
    )
    run = StyleGAN2Run(pool, options, out)
    start = run.resume_or_start(settings.resume)
    done = run.train_from(start, settings.progress)
    run.publish(done)
    return out


class StyleGAN2Run:
    """One StyleGAN2 training run: its networks, optimizers and states, and the phases of a step.

    Built fresh from the options (seeded), then prepared by accelerate; the EMA generator, ADA
    and the path-length mean are registered for checkpointing, so `resume_or_start` restores
    them all. `record` is the run's record as checkpoints and `histosynth.json` hold it.
    """

    def __init__(self, pool: TrainingPool, options: StyleGAN2Options, out: Path) -> None:
        self.pool, self.options, self.out = pool, options, out
        self.accelerator = accelerator = make_accelerator(options)
        self.device = accelerator.device
        torch.manual_seed(derive_seed(options.seed, "stylegan2-init"))
        generator, discriminator = build_networks(options, len(pool.classes))
        for network in (generator, discriminator):
            keep_gradient_layout(network)
        self.ema = copy.deepcopy(generator).eval().requires_grad_(False)
        self.augment = AdaptiveAugment(
            target=options.ada_target,
            interval=options.ada_interval,
            speed_images=options.ada_speed,
            enabled=options.augment,
        )
        self.pl_mean = PathLengthMean()
        rate = options.learning_rate
        g_optimizer = lazy_adam(generator.parameters(), rate, options.pl_interval, options)
        d_optimizer = lazy_adam(discriminator.parameters(), rate, options.r1_interval, options)
        in_memory_format(accelerator.device, generator, discriminator, self.ema)
        self.generator, self.discriminator, self.g_optimizer, self.d_optimizer = accelerator.prepare(
            generator, discriminator, g_optimizer, d_optimizer
        )
        for part in (self.ema, self.augment, self.pl_mean):
            part.to(self.device)
        register_states(accelerator, self.ema, self.augment, self.pl_mean)
        self.plain_generator = plain_model(accelerator, self.generator)
        self.monitor = CollapseMonitor(
            pool,
            options.size,
            options.z_dim,
            samples=options.monitor_samples,
            seed=options.seed,
            min_diversity=options.min_diversity,
            max_gap=options.max_gap,
            start=options.monitor_start,
        )
        self.plan = run_plan(accelerator, options)
        self.total = total_steps(options, len(pool.files))
        self.images_per_step = options.batch_size  # the global batch
        half_life = options.ema_half_life
        self.ema_beta = 0.5 ** (self.images_per_step / half_life) if half_life > 0 else 0.0
        self.record = run_record(KIND, options, pool)

    def resume_or_start(self, resume: bool) -> int:
        """The steps done: restored from the newest checkpoint, or 0 with step 0 saved first."""
        options = self.options
        start = resume_step(self.accelerator, self.out, resume, options, self.record)
        folders = checkpoint_folders(self.out)
        self.record["rollbacks"] = list(read_run(folders[-1][1]).get("rollbacks", [])) if folders else []
        if not folders:
            save_checkpoint(self.accelerator, self.out, 0, self.record, options.keep_checkpoints)
        return start

    def train_from(self, start: int, progress: bool | None) -> int:
        """Run the steps from `start` to the end, rolling back after each collapse; the steps done."""
        self.apply_rates()
        self.generator.train()
        self.discriminator.train()
        dataset = TileDataset(self.pool, self.options.size, self.options.seed)
        while True:
            try:
                return run_steps(
                    self.accelerator,
                    dataset,
                    self.options,
                    out=self.out,
                    start=start,
                    step=self.step,
                    run=self.record,
                    description="train stylegan2",
                    progress=progress,
                )
            except CollapseDetected as collapse:
                start = self.roll_back(collapse.check)
                self.apply_rates()
                self.monitor.reset_gap()

    def rates(self) -> tuple[float, float]:
        """Learning rate and R1 gamma after the rollbacks so far."""
        count = len(self.record["rollbacks"])
        return (
            self.options.learning_rate * self.options.rollback_lr_factor**count,
            self.options.r1_gamma * self.options.rollback_gamma_factor**count,
        )

    def apply_rates(self) -> None:
        """Give both optimizers the current rate, with lazy regularisation's correction."""
        learning_rate, _ = self.rates()
        for optimizer, interval in (
            (self.g_optimizer, self.options.pl_interval),
            (self.d_optimizer, self.options.r1_interval),
        ):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate * interval / (interval + 1)

    def step(self, images: torch.Tensor, labels: torch.Tensor, index: int) -> torch.Tensor:
        """Optimizer step `index`: G's phases, D's phases, the EMA and ADA; a check where one is due."""
        options = self.options
        seed = derive_seed(
            options.seed,
            "stylegan2-step",
            index,
            len(self.record["rollbacks"]),
            self.accelerator.process_index,
        )
        torch.manual_seed(seed)
        mix_cutoff = None
        if torch.rand(()) < options.style_mixing:
            mix_cutoff = int(torch.randint(1, self.plain_generator.num_ws, ()))
        g_loss = self.generator_phases(labels, index, mix_cutoff)
        d_loss = self.discriminator_phases(images, labels, index, mix_cutoff)
        update_ema(self.ema, self.plain_generator, self.ema_beta)
        if (index + 1) % options.ada_interval == 0:
            self.adjust_augmentation()
        done = index + 1
        if done % options.checkpoint_every == 0 or done == self.total:
            self.check(done)
        return g_loss + d_loss

    def fakes(self, labels: torch.Tensor, mix_cutoff: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images of the batch's classes from fresh z (and a second z to mix styles from), and z."""
        z = torch.randn(labels.shape[0], self.options.z_dim, device=self.device)
        mix = torch.randn(labels.shape[0], self.options.z_dim, device=self.device) if mix_cutoff else None
        return self.generator(z, labels, mix_z=mix, mix_cutoff=mix_cutoff), z

    def generator_phases(self, labels: torch.Tensor, index: int, mix_cutoff: int | None) -> torch.Tensor:
        """G main (non-saturating loss), then the path-length penalty where due; the main loss.

        Each phase runs over the micro-batches of this process's share (`per_device_batch_size`)
        and steps G once, its gradient all-reduced after the last micro-batch only.
        """
        options, plan = self.options, self.plan
        drawn: list[torch.Tensor] = []

        def main_loss(rows: slice) -> torch.Tensor:
            fake, z = self.fakes(labels[rows], mix_cutoff)
            drawn.append(z)
            return F.softplus(-self.discriminator(self.augment(fake), labels[rows])).mean()

        with self.training_only(self.generator) as networks:
            self.g_optimizer.zero_grad(set_to_none=True)
            g_loss = accumulate_backward(self.accelerator, networks, plan.micro_rows(), main_loss)
            self.g_optimizer.step()
        if options.pl_weight > 0 and index % options.pl_interval == 0:
            count = max(1, labels.shape[0] // options.pl_batch_shrink)

            def penalty(rows: slice) -> torch.Tensor:
                pl_z = torch.randn(rows.stop - rows.start, options.z_dim, device=self.device)
                lengths = path_length_penalty(
                    self.generator, pl_z, labels[rows], self.pl_mean, options.pl_decay
                )
                return lengths * options.pl_weight * options.pl_interval

            with self.training_only(self.generator) as networks:
                self.g_optimizer.zero_grad(set_to_none=True)
                accumulate_backward(self.accelerator, networks, plan.micro_rows(count), penalty)
                self.g_optimizer.step()
        self.plain_generator.update_w_avg(torch.cat(drawn), labels)
        return g_loss

    def discriminator_phases(
        self, images: torch.Tensor, labels: torch.Tensor, index: int, mix_cutoff: int | None
    ) -> torch.Tensor:
        """D main (logistic loss on reals and fresh fakes), then R1 where due; the main loss,
        each phase over the micro-batches of this process's share, as G's."""
        options, plan = self.options, self.plan

        def main_loss(rows: slice) -> torch.Tensor:
            with torch.no_grad():
                fake, _ = self.fakes(labels[rows], mix_cutoff)
            real_logits = self.discriminator(self.augment(images[rows]), labels[rows])
            fake_logits = self.discriminator(self.augment(fake), labels[rows])
            self.augment.accumulate(real_logits)
            self.monitor.record_logits(real_logits, fake_logits)
            return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()

        with self.training_only(self.discriminator) as networks:
            self.d_optimizer.zero_grad(set_to_none=True)
            d_loss = accumulate_backward(self.accelerator, networks, plan.micro_rows(), main_loss)
            self.d_optimizer.step()
        _, gamma = self.rates()
        if gamma > 0 and index % options.r1_interval == 0:

            def penalty(rows: slice) -> torch.Tensor:
                r1 = r1_penalty(self.discriminator, self.augment, images[rows], labels[rows])
                return r1 * (gamma / 2) * options.r1_interval

            with self.training_only(self.discriminator) as networks:
                self.d_optimizer.zero_grad(set_to_none=True)
                accumulate_backward(self.accelerator, networks, plan.micro_rows(), penalty)
                self.d_optimizer.step()
        return d_loss

    def training_only(self, active: torch.nn.Module) -> contextlib.AbstractContextManager:
        """A phase that trains `active` alone, as StyleGAN2's phases do (`training_only`)."""
        inactive = self.discriminator if active is self.generator else self.generator
        return training_only(self.accelerator, active, inactive)

    def adjust_augmentation(self) -> None:
        """Move ADA's p by r_t summed over every process's images."""
        for total_of in (self.augment.sign_sum, self.augment.sign_count):
            total_of.copy_(self.accelerator.reduce(total_of.clone(), "sum"))
        self.augment.adjust(self.images_per_step)

    def check(self, done: int) -> None:
        """The collapse guard before a checkpoint: logged, and raised as `CollapseDetected` on failure."""
        check = self.monitor.check(self.plain_generator, done, self.device)
        check = broadcast_object_list([check])[0]  # all processes act on the main one's verdict
        learning_rate, gamma = self.rates()
        augment_p = float(self.augment.p)
        self.write_log(
            {
                "event": "check",
                **check.to_record(),
                "augment_p": augment_p,
                "learning_rate": learning_rate,
                "r1_gamma": gamma,
            }
        )
        if self.accelerator.is_main_process:
            logger.info("%s; ADA p %.3f", summary(check), augment_p)
        if check.collapsed:
            raise CollapseDetected(check)

    def roll_back(self, check: MonitorCheck) -> int:
        """Restore the newest (good) checkpoint after a failed check and record the event.

        Returns:
            The step of the checkpoint restored.

        Raises:
            HistosynthError: the run already used its `max_rollbacks` rollbacks (giving up).
        """
        options, rollbacks = self.options, self.record["rollbacks"]
        step, folder = checkpoint_folders(self.out)[-1]
        learning_rate, gamma = self.rates()
        if len(rollbacks) >= options.max_rollbacks:
            self.write_log({"event": "give-up", **check.to_record(), "last_good_checkpoint": folder.name})
            raise HistosynthError(
                f"{self.out}: mode collapse at step {check.step} ({'; '.join(check.reasons)}) persisted "
                f"after {len(rollbacks)} rollback(s) (learning rate now {learning_rate:g}, R1 gamma "
                f"{gamma:g}); no model was written; the last good checkpoint is {folder}: continue with "
                "--resume and a higher --max-rollbacks, or start a new run with a lower --learning-rate "
                "or a higher --r1-gamma"
            )
        restore_checkpoint(self.accelerator, folder)
        event = {
            "detected_at": check.step,
            "rolled_back_to": step,
            "reasons": check.reasons,
            "learning_rate": learning_rate * options.rollback_lr_factor,
            "r1_gamma": gamma * options.rollback_gamma_factor,
        }
        rollbacks.append(event)
        self.write_log({"event": "rollback", **event})
        logger.warning(
            "mode collapse at step %d (%s): rolled back to step %d with learning rate %g and R1 gamma %g",
            check.step,
            "; ".join(check.reasons),
            step,
            event["learning_rate"],
            event["r1_gamma"],
        )
        return step

    def write_log(self, event: dict[str, Any]) -> None:
        """Append a time-stamped event to `<out>/train-log.jsonl` (the main process only)."""
        if self.accelerator.is_main_process:
            stamped = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), **event}
            with (self.out / LOG_NAME).open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(stamped) + "\n")

    def publish(self, done: int) -> None:
        """Write the model folder (EMA generator, discriminator) sealed by its `histosynth.json`."""
        accelerator, options = self.accelerator, self.options

        def write(staging: Path) -> None:
            self.ema.save_pretrained(staging / "generator")
            plain_model(accelerator, self.discriminator).save_pretrained(staging / "discriminator")

        learning_rate, gamma = self.rates()
        publish_on_main_process(
            accelerator,
            self.out,
            write,
            kind=KIND,
            classes=self.pool.classes,
            settings={**to_record(options), "effective_learning_rate": options.learning_rate},
            fingerprint=self.pool.fingerprint,
            steps=done,
            extra={
                "augment_p": float(self.augment.p),
                "rollbacks": self.record["rollbacks"],
                "final_learning_rate": learning_rate,
                "final_r1_gamma": gamma,
                "run_log": LOG_NAME,
                **batch_record(self.plan, done, options.learning_rate, "as given (StyleGAN2)"),
                "generator": "EMA weights (half-life in images: ema_half_life)",
            },
        )
