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
from trainer.core.data import TrainingPool
from trainer.core.loop import run_steps
from trainer.core.options import effective_learning_rate
from trainer.diffusion.latents import LatentCache, LatentDataset, draw_latents, latent_cache
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


def noise_prediction_loss(
    denoiser: nn.Module,
    noise_schedule: DDPMScheduler,
    latents: torch.Tensor,
    labels: torch.Tensor,
    *,
    generator: torch.Generator,
    cond_drop: float,
    null_class: int,
    autocast: Callable[[], Any],
) -> torch.Tensor:
    """The DDPM training loss of a conditional denoiser: MSE of the predicted noise (CompVis `eps`).

    Every random draw comes from `generator` in a fixed order (noise, timesteps, condition
    dropout), so a step is reproducible from its seed and a resumed run equals an uninterrupted one.

    Args:
        denoiser: called as `denoiser(noisy, timesteps, labels)`; returns the predicted noise.
        noise_schedule: the training scheduler whose `add_noise` makes the noisy latents.
        latents: scaled latents of the batch.
        labels: class (or prompt) indices; replaced by `null_class` with probability `cond_drop`,
            which trains the unconditional branch of classifier-free guidance.
        generator: the step's generator, on the latents' device.
        cond_drop: probability of the null condition per example.
        null_class: the index of the null condition.
        autocast: the accelerator's autocast context factory (mixed precision on GPU).

    Returns:
        The scalar loss, in float32.
    """
    noise = torch.randn(latents.shape, generator=generator, device=latents.device)
    steps = noise_schedule.config.num_train_timesteps
    timesteps = torch.randint(0, steps, (latents.shape[0],), generator=generator, device=latents.device)
    dropped = torch.rand(labels.shape, generator=generator, device=labels.device) < cond_drop
    labels = torch.where(dropped, torch.full_like(labels, null_class), labels)
    noisy = noise_schedule.add_noise(latents, noise, timesteps)
    with autocast():
        prediction = denoiser(noisy, timesteps, labels)
    return torch.nn.functional.mse_loss(prediction.float(), noise.float())


def encode_pool(
    accelerator: Accelerator,
    vae: nn.Module,
    vae_folder: Path,
    kind: str,
    pool: TrainingPool,
    size: int,
    progress: bool | None,
) -> LatentCache:
    """The pool's latent cache, built once by the main process while the others wait for it.

    The frozen autoencoder visits the device only for the encoding; from then on training reads
    the cache, and the autoencoder's folder is all a model folder needs of it.
    """
    vae.to(accelerator.device)
    with accelerator.main_process_first():
        cache = latent_cache(vae, vae_folder, kind, pool, size, device=accelerator.device, progress=progress)
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
        rate = effective_learning_rate(options, accelerator.num_processes)
        optimizer = torch.optim.AdamW(trained, lr=rate)
        lr_schedule = get_scheduler(
            "constant_with_warmup",
            optimizer,
            num_warmup_steps=options.lr_warmup_steps * accelerator.num_processes,
        )
        denoiser, optimizer, lr_schedule = accelerator.prepare(denoiser, optimizer, lr_schedule)
        ema = ema_parameters = None
        if ema_decay is not None:
            ema_parameters = list(accelerator.unwrap_model(denoiser).unet.parameters())
            ema = EMAModel(ema_parameters, decay=ema_decay)
            ema.to(accelerator.device)
            accelerator.register_for_checkpointing(ema)
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
            ema,
            ema_parameters,
        )

    def step(self, moments: torch.Tensor, labels: torch.Tensor, index: int) -> float:
        """One optimizer step on a batch of latent moments: draw, scale, noise, predict, update."""
        accelerator, options = self.accelerator, self.options
        generator = torch.Generator(accelerator.device)
        generator.manual_seed(derive_seed(options.seed, self.seed_name, index, accelerator.process_index))
        loss = noise_prediction_loss(
            self.denoiser,
            self.noise_schedule,
            draw_latents(moments, self.cache.kind, generator) * self.scaling_factor,
            labels,
            generator=generator,
            cond_drop=options.cond_drop,
            null_class=self.null_class,
            autocast=accelerator.autocast,
        )
        self.optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        self.optimizer.step()
        self.lr_schedule.step()
        if self.ema is not None and accelerator.sync_gradients:
            self.ema.step(self.ema_parameters)
        return float(loss.detach())

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
