"""What the two diffusion trainers share: the denoiser, its DDPM loss, and its training on cached latents.

`train_ldm` (a fresh U-Net and class embedder on an autoencoder's latents) and `train_sd_finetune`
(Stable Diffusion's U-Net on its VAE's latents, one prompt per class) differ in what they build
and what they publish; between those, both encode the pool once into the latent cache, train
the same epsilon loss under the same warm-up schedule with AdamW, and walk the same seeded
steps. `DenoiserTraining` is that middle part.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch import nn

from histosynth.sampling import derive_seed
from trainer.core.batches import BatchPlan, accumulate_backward
from trainer.core.data import TrainingPool
from trainer.core.loop import in_memory_format, plain_model, register_states, run_plan, run_steps
from trainer.core.options import effective_learning_rate
from trainer.diffusion.latents import LatentCache, LatentDataset, latent_cache, sample_latents
from trainer.diffusion.options import LDMOptions, SDFinetuneOptions


class Denoiser(nn.Module):
    """U-Net and condition embedder in one `forward`, so a DDP wrapper sees both: eps(x_t, t, label)."""

    def __init__(self, unet: UNet2DConditionModel, embedder: nn.Module) -> None:
        super().__init__()
        self.unet = unet
        self.embedder = embedder

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.unet(noisy, timesteps, encoder_hidden_states=self.embedder(labels)).sample


def training_scheduler(num_train_timesteps: int, beta_start: float, beta_end: float) -> DDPMScheduler:
    """DDPM with the CompVis betas: linspace(sqrt(start), sqrt(end), T) ** 2."""
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule="scaled_linear",
        beta_start=beta_start,
        beta_end=beta_end,
        prediction_type="epsilon",
        clip_sample=False,
    )


@dataclass(frozen=True)
class StepDraws:
    """Every random draw of one training step, drawn for the whole global batch.

    A step's draws come from one generator seeded by the step alone, for all of the global
    batch's rows in a fixed order (posterior noise, noise, timesteps, condition dropout); each
    process takes its rows (`BatchPlan.rows`) and each micro-batch its part of those. So a tile's
    draws do not depend on how many processes or micro-batches share the step, and a run on 8
    GPUs, or with `per_device_batch_size`, computes the same step as on one device.

    Attributes:
        posterior: N(0, 1) for sampling a KL autoencoder's posterior (None for VQ latents).
        noise: the DDPM noise added to the latents.
        timesteps: the diffusion step of each row.
        dropped: rows trained with the null condition (classifier-free guidance).
    """

    posterior: torch.Tensor | None
    noise: torch.Tensor
    timesteps: torch.Tensor
    dropped: torch.Tensor

    @classmethod
    def draw(
        cls,
        generator: torch.Generator,
        rows: int,
        moments_shape: tuple[int, ...],
        kind: str,
        num_train_timesteps: int,
        cond_drop: float,
    ) -> StepDraws:
        """The draws of `rows` rows whose cached moments have shape `moments_shape` (C, H, W)."""
        device = generator.device
        channels, *spatial = moments_shape
        kl = kind == "kl-autoencoder"
        shape = (rows, channels // 2 if kl else channels, *spatial)
        posterior = torch.randn(shape, generator=generator, device=device) if kl else None
        noise = torch.randn(shape, generator=generator, device=device)
        timesteps = torch.randint(0, num_train_timesteps, (rows,), generator=generator, device=device)
        dropped = torch.rand((rows,), generator=generator, device=device) < cond_drop
        return cls(posterior, noise, timesteps, dropped)

    def __getitem__(self, rows: slice) -> StepDraws:
        posterior = None if self.posterior is None else self.posterior[rows]
        return StepDraws(posterior, self.noise[rows], self.timesteps[rows], self.dropped[rows])


def noise_prediction_loss(
    denoiser: nn.Module,
    noise_schedule: DDPMScheduler,
    latents: torch.Tensor,
    labels: torch.Tensor,
    draws: StepDraws,
    *,
    null_class: int,
    autocast: Callable[[], Any],
) -> torch.Tensor:
    """The DDPM training loss of a conditional denoiser: MSE of the predicted noise (CompVis `eps`).

    Args:
        denoiser: called as `denoiser(noisy, timesteps, labels)`; returns the predicted noise.
        noise_schedule: the training scheduler whose `add_noise` makes the noisy latents.
        latents: scaled latents of the rows.
        labels: class (or prompt) indices; replaced by `null_class` where `draws.dropped`,
            which trains the unconditional branch of classifier-free guidance.
        draws: the rows' noise, timesteps and dropout (`StepDraws`).
        null_class: the index of the null condition.
        autocast: the accelerator's autocast context factory (mixed precision on GPU).

    Returns:
        The scalar loss (the mean over the rows), in float32.
    """
    labels = torch.where(draws.dropped, torch.full_like(labels, null_class), labels)
    noisy = noise_schedule.add_noise(latents, draws.noise, draws.timesteps)
    with autocast():
        prediction = denoiser(noisy, draws.timesteps, labels)
    return torch.nn.functional.mse_loss(prediction.float(), draws.noise.float())


def encode_pool(
    accelerator: Accelerator,
    vae: nn.Module,
    vae_folder: Path,
    kind: str,
    pool: TrainingPool,
    size: int,
    progress: bool | None,
    workers: int = 0,
) -> LatentCache:
    """The pool's latent cache, built once, every process encoding its share (`latent_cache`).

    The frozen autoencoder visits the device only for the encoding; from then on training reads
    the cache, and the autoencoder's folder is all a model folder needs of it.
    """
    vae.to(accelerator.device)
    cache = latent_cache(vae, vae_folder, kind, pool, size, accelerator, workers=workers, progress=progress)
    vae.to("cpu")
    return cache


@dataclass
class DenoiserTraining:
    """A denoiser prepared for training on cached latents, and its step.

    Attributes:
        accelerator: the run's accelerator; `denoiser`, `optimizer` and `lr_schedule` are prepared by it.
        denoiser: the (wrapped) denoiser.
        optimizer: AdamW over the trained parameters, at `rate`.
        lr_schedule: constant after a linear warm-up of `lr_warmup_steps` (per process).
        noise_schedule: the DDPM training schedule.
        cache: the pool's latents.
        scaling_factor: what the latents are multiplied by before noising.
        null_class: the condition index that classifier-free guidance's dropout uses.
        seed_name: the stream name of each step's seed (`ldm-step`, `sd-step`).
        options: the run's settings (seed, cond_drop, ...).
        rate: the optimizer's learning rate (`effective_learning_rate`).
        plan: how each global batch is shared out over processes and micro-batches.
        ema: an EMA of `ema_parameters`, stepped after each optimizer step, or None.
        ema_parameters: the parameters the EMA follows.
    """

    accelerator: Accelerator
    denoiser: nn.Module
    optimizer: torch.optim.Optimizer
    lr_schedule: Any
    noise_schedule: DDPMScheduler
    cache: LatentCache
    scaling_factor: float
    null_class: int
    seed_name: str
    options: LDMOptions | SDFinetuneOptions
    rate: float
    plan: BatchPlan
    ema: EMAModel | None = None
    ema_parameters: list[nn.Parameter] | None = None

    @classmethod
    def prepare(
        cls,
        accelerator: Accelerator,
        denoiser: Denoiser,
        trained: list[nn.Parameter],
        noise_schedule: DDPMScheduler,
        cache: LatentCache,
        *,
        scaling_factor: float,
        null_class: int,
        seed_name: str,
        options: LDMOptions | SDFinetuneOptions,
        ema_decay: float | None = None,
    ) -> DenoiserTraining:
        """Optimizer and warm-up for `trained`, prepared with the denoiser; an EMA of the U-Net
        (registered for checkpointing) when `ema_decay` is given."""
        rate = effective_learning_rate(options)
        optimizer = torch.optim.AdamW(trained, lr=rate)
        lr_schedule = get_scheduler(
            "constant_with_warmup",
            optimizer,
            num_warmup_steps=options.lr_warmup_steps * accelerator.num_processes,
        )
        in_memory_format(accelerator.device, denoiser)
        denoiser, optimizer, lr_schedule = accelerator.prepare(denoiser, optimizer, lr_schedule)
        ema = ema_parameters = None
        if ema_decay is not None:
            ema_parameters = list(plain_model(accelerator, denoiser).unet.parameters())
            # on a GPU one fused update instead of a launch per tensor; on a CPU the fused form is
            # slower (benchmarks/train_throughput.py: 0.71x), so the loop stays there
            ema = EMAModel(ema_parameters, decay=ema_decay, foreach=accelerator.device.type == "cuda")
            ema.to(accelerator.device)
            register_states(accelerator, ema)
        return cls(
            accelerator,
            denoiser,
            optimizer,
            lr_schedule,
            noise_schedule,
            cache,
            scaling_factor,
            null_class,
            seed_name,
            options,
            rate,
            run_plan(accelerator, options),
            ema,
            ema_parameters,
        )

    def step(self, moments: torch.Tensor, labels: torch.Tensor, index: int) -> torch.Tensor:
        """One optimizer step on this process's share of a global batch of latent moments:
        draw (for the whole global batch), sample, noise, predict and backpropagate in
        micro-batches, update."""
        accelerator, options, plan = self.accelerator, self.options, self.plan
        generator = torch.Generator(accelerator.device)
        generator.manual_seed(derive_seed(options.seed, self.seed_name, index))
        steps = self.noise_schedule.config.num_train_timesteps
        global_draws = StepDraws.draw(
            generator, plan.global_size, tuple(moments.shape[1:]), self.cache.kind, steps, options.cond_drop
        )
        draws = global_draws[plan.rows]

        def loss_of(rows: slice) -> torch.Tensor:
            latents = sample_latents(moments[rows], draws[rows].posterior) * self.scaling_factor
            return noise_prediction_loss(
                self.denoiser,
                self.noise_schedule,
                latents,
                labels[rows],
                draws[rows],
                null_class=self.null_class,
                autocast=accelerator.autocast,
            )

        self.optimizer.zero_grad(set_to_none=True)
        loss = accumulate_backward(accelerator, [self.denoiser], plan.micro_rows(), loss_of)
        self.optimizer.step()
        self.lr_schedule.step()
        if self.ema is not None and accelerator.sync_gradients:
            self.ema.step(self.ema_parameters)
        return loss

    def train(
        self,
        pool: TrainingPool,
        out: Path,
        start: int,
        record: dict[str, Any],
        description: str,
        progress: bool | None,
    ) -> int:
        """Train from step `start` to the end of the run over the cached latents; the steps done."""
        self.denoiser.train()
        return run_steps(
            self.accelerator,
            LatentDataset(self.cache, pool.labels, self.options.seed),
            self.options,
            out=out,
            start=start,
            step=self.step,
            run=record,
            description=description,
            progress=progress,
        )
