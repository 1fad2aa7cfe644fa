"""The paper's first stages: KL-f8 and VQ-f8 autoencoders, trained as the CompVis autoencoders.

Models are diffusers' `AutoencoderKL` (4 latent channels, a diagonal Gaussian posterior) and
`VQModel` (a codebook of 16,384 vectors of dimension 4), both with f=8 (256 x 256 -> 32 x 32).
The loss is CompVis `LPIPSWithDiscriminator` (KL) and taming's `VQLPIPSWithDiscriminator` (VQ):

    rec = |x - x'| + perceptual_weight * LPIPS(x, x')
    KL: loss = sum(rec) / B + kl_weight * KL(q(z|x) || N(0, I)) + lambda * disc_factor * g
    VQ: loss = mean(rec) + codebook_weight * codebook_and_commitment + lambda * disc_factor * g

with g = -mean(D(x')) from the PatchGAN, lambda its adaptive weight (`discriminator`), and
disc_factor 0 before `disc_start`. The discriminator takes the hinge loss on its own optimizer.
Both optimizers are Adam(betas 0.5, 0.9), as CompVis. CompVis keeps the KL loss's log-variance
at its initial 0 (it is not in the optimizer), so it is left out here. Before `disc_start` the
discriminator is not run at all, which changes nothing the autoencoder learns; after it, each
phase trains one network, the other frozen (no gradient of D's weights in the autoencoder's phase).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, VQModel
from diffusers.optimization import get_scheduler
from torch import nn

from histosynth.sampling import derive_seed
from trainer.autoencoder.discriminator import PatchDiscriminator, adaptive_weight, hinge_loss
from trainer.autoencoder.model import build_autoencoder
from trainer.autoencoder.options import AutoencoderOptions, autoencoder_options
from trainer.autoencoder.perceptual import load_lpips
from trainer.core.batches import accumulate_backward, training_only
from trainer.core.data import TileDataset, read_training_pool
from trainer.core.loop import (
    batch_record,
    in_memory_format,
    make_accelerator,
    plain_model,
    publish_on_main_process,
    resume_step,
    run_plan,
    run_record,
    run_steps,
)
from trainer.core.options import RunSettings, effective_learning_rate, learning_rate_rule, to_record

logger = logging.getLogger(__name__)

KINDS = {"kl": "kl-autoencoder", "vq": "vq-autoencoder"}


class Reconstruction(nn.Module):
    """Encode, sample or quantise, decode: returns (reconstruction, regulariser per batch).

    One `forward`, so that a distributed wrapper (DDP) sees the whole autoencoder pass. The
    regulariser is the KL divergence summed per image and averaged over the batch (KL), or the
    codebook and commitment loss (VQ, diffusers' `VectorQuantizer` in taming's legacy form).
    """

    def __init__(self, autoencoder: AutoencoderKL | VQModel) -> None:
        super().__init__()
        self.autoencoder = autoencoder

    def forward(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.autoencoder, AutoencoderKL):
            posterior = self.autoencoder.encode(images).latent_dist
            latents = posterior.sample(generator=generator)
            return self.autoencoder.decode(latents).sample, posterior.kl().mean()
        decoded = self.autoencoder.decode(self.autoencoder.encode(images).latents)
        return decoded.sample, decoded.commit_loss.mean()


@dataclass(frozen=True)
class AutoencoderSettings(RunSettings):
    """How `train_autoencoder` runs; each field is the CLI option of that name.

    Attributes:
        options: what is trained (`trainer.autoencoder.options.autoencoder_options`, e.g.
            `autoencoder_options("vq", "paper", max_steps=100)`); default: the tiny KL-f8.
        perceptual_weights: torchvision's VGG16 state dict for LPIPS (default: torch's hub
            cache); not read when `options.perceptual` is off.
    """

    options: AutoencoderOptions = field(default_factory=lambda: autoencoder_options("kl"))
    perceptual_weights: str | Path | None = None


def train_autoencoder(data: str | Path, out: str | Path, settings: AutoencoderSettings | None = None) -> Path:
    """Train a KL-f8 or VQ-f8 autoencoder on a pool and save it as a model folder.

    Args:
        data: the training pool `<pool>/<CLASS>/<image>`.
        out: the model folder (diffusers `config.json` + weights, `histosynth.json`,
            `checkpoints/`).
        settings: the run (`AutoencoderSettings`; default: the tiny KL-f8 preset).

    Returns:
        The model folder.

    Raises:
        HistosynthError: bad pool, settings, out folder or resume (one line naming the cause);
            missing VGG16 weights when the perceptual loss is on.
    """
    settings = settings or AutoencoderSettings()
    options, progress = settings.options, settings.progress
    kind, perceptual_weights = options.kind, settings.perceptual_weights
    out = Path(out).expanduser()
    pool = read_training_pool(data, settings.classes, fingerprint=options.fingerprint, progress=progress)
    lpips_model = load_lpips(perceptual_weights) if options.perceptual else None
    accelerator = make_accelerator(options)
    torch.manual_seed(derive_seed(options.seed, "autoencoder-init"))
    model = Reconstruction(build_autoencoder(options))
    discriminator = PatchDiscriminator(3, options.disc_channels, options.disc_layers)
    rate = effective_learning_rate(options)
    optimizer = torch.optim.Adam(model.parameters(), lr=rate, betas=(0.5, 0.9))
    disc_optimizer = torch.optim.Adam(discriminator.parameters(), lr=rate, betas=(0.5, 0.9))
    warmup = options.lr_warmup_steps * accelerator.num_processes
    schedulers = [
        get_scheduler("constant_with_warmup", opt, num_warmup_steps=warmup)
        for opt in (optimizer, disc_optimizer)
    ]
    in_memory_format(accelerator.device, model, discriminator)
    model, discriminator, optimizer, disc_optimizer, *schedulers = accelerator.prepare(
        model, discriminator, optimizer, disc_optimizer, *schedulers
    )
    if lpips_model is not None:
        lpips_model.to(accelerator.device)
        in_memory_format(accelerator.device, lpips_model)
    plan = run_plan(accelerator, options)
    run = run_record(KINDS[kind], options, pool)
    start = resume_step(accelerator, out, settings.resume, options, run)
    last_layer = plain_model(accelerator, model).autoencoder.decoder.conv_out.weight

    def step(images: torch.Tensor, labels: torch.Tensor, index: int) -> torch.Tensor:
        generator = torch.Generator(accelerator.device)
        generator.manual_seed(derive_seed(options.seed, "autoencoder-step", index, accelerator.process_index))
        adversarial = index >= options.disc_start
        reconstructions: list[torch.Tensor] = []

        def autoencoder_loss(rows: slice) -> torch.Tensor:
            part = images[rows]
            with accelerator.autocast():
                reconstruction, regulariser = model(part, generator)
                reconstructions.append(reconstruction.detach())
                rec = torch.abs(part - reconstruction)
                if lpips_model is not None:
                    rec = rec + options.perceptual_weight * lpips_model(
                        part.contiguous(), reconstruction.contiguous()
                    )
                if options.kind == "kl":
                    nll = rec.sum() / rec.shape[0]
                    loss = nll + options.kl_weight * regulariser
                else:
                    nll = rec.mean()
                    loss = nll + options.codebook_weight * regulariser
                if adversarial:  # the adaptive weight of each micro-batch, as CompVis under accumulation
                    generator_loss = -discriminator(reconstruction).mean()
                    weight = adaptive_weight(nll, generator_loss, last_layer, options.disc_weight)
                    loss = loss + weight * generator_loss
            return loss

        def discriminator_loss(rows: slice) -> torch.Tensor:
            with accelerator.autocast():
                return hinge_loss(discriminator(images[rows]), discriminator(reconstructed[rows]))

        with training_only(accelerator, model, discriminator) as networks:
            optimizer.zero_grad(set_to_none=True)
            loss = accumulate_backward(accelerator, networks, plan.micro_rows(), autoencoder_loss)
            optimizer.step()
        schedulers[0].step()
        if adversarial:
            reconstructed = torch.cat(reconstructions)
            # the reconstructions are detached: the autoencoder takes no part in D's phase
            disc_optimizer.zero_grad(set_to_none=True)
            accumulate_backward(accelerator, (discriminator,), plan.micro_rows(), discriminator_loss)
            disc_optimizer.step()
            schedulers[1].step()
        return loss

    model.train()
    discriminator.train()
    done = run_steps(
        accelerator,
        TileDataset(pool, options.size, options.seed),
        options,
        out=out,
        start=start,
        step=step,
        run=run,
        description=f"train {kind} autoencoder",
        progress=progress,
    )
    publish_on_main_process(
        accelerator,
        out,
        plain_model(accelerator, model).autoencoder.save_pretrained,
        kind=KINDS[kind],
        classes=pool.classes,
        settings={**to_record(options), "effective_learning_rate": rate},
        fingerprint=pool.fingerprint,
        steps=done,
        extra={
            **batch_record(plan, done, rate, learning_rate_rule(options)),
            "perceptual_weights": str(perceptual_weights)
            if perceptual_weights and options.perceptual
            else None,
        },
    )
    return out
