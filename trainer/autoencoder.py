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
discriminator is not run at all, which changes nothing the autoencoder learns.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, VQModel
from diffusers.optimization import get_scheduler
from torch import nn

from histosynth.sampling import derive_seed
from trainer.data import TileDataset, read_training_pool
from trainer.discriminator import PatchDiscriminator, adaptive_weight, hinge_loss
from trainer.loop import make_accelerator, resume_step, run_steps
from trainer.model_folder import publish_model, write_model_info
from trainer.options import AutoencoderOptions, effective_learning_rate, resolve, to_record
from trainer.perceptual import load_lpips

logger = logging.getLogger(__name__)

KINDS = {"kl": "kl-autoencoder", "vq": "vq-autoencoder"}


def build_autoencoder(options: AutoencoderOptions) -> AutoencoderKL | VQModel:
    """A fresh diffusers autoencoder of the options' kind and architecture."""
    levels = len(options.block_out_channels)
    down = tuple(
        "AttnDownEncoderBlock2D" if level in options.attention_levels else "DownEncoderBlock2D"
        for level in range(levels)
    )
    up = tuple(
        "AttnUpDecoderBlock2D" if levels - 1 - index in options.attention_levels else "UpDecoderBlock2D"
        for index in range(levels)
    )
    common: dict[str, Any] = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=tuple(options.block_out_channels),
        layers_per_block=options.layers_per_block,
        latent_channels=options.latent_channels,
        norm_num_groups=options.norm_num_groups,
        sample_size=options.size,
    )
    if options.kind == "kl":
        return AutoencoderKL(**common)
    return VQModel(
        **common, num_vq_embeddings=options.num_vq_embeddings, vq_embed_dim=options.latent_channels
    )


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


def train_autoencoder(
    data: str | Path,
    out: str | Path,
    kind: str = "kl",
    preset: str = "tiny",
    *,
    resume: bool = False,
    perceptual_weights: str | Path | None = None,
    classes: list[str] | None = None,
    progress: bool | None = None,
    **settings: Any,
) -> Path:
    """Train a KL-f8 or VQ-f8 autoencoder on a pool and save it as a model folder.

    Args:
        data: the training pool `<pool>/<CLASS>/<image>`.
        out: the model folder (diffusers `config.json` + weights, `histosynth.json`,
            `checkpoints/`).
        kind: `kl` or `vq`.
        preset: `paper` (CompVis kl-f8 / vq-f8, the paper's epochs and batch) or `tiny`.
        resume: continue the run in `out` from its newest checkpoint.
        perceptual_weights: torchvision's VGG16 state dict for LPIPS (default: torch's hub
            cache); not read with `perceptual=False`.
        classes: the classes to train on (default: all); recorded in label order.
        progress: show the progress bar (None: when stderr is a terminal).
        settings: overrides of the preset by field name (`trainer.options.AutoencoderOptions`),
            e.g. `max_steps=100`, `batch_size=4`, `perceptual=False`.

    Returns:
        The model folder.

    Raises:
        HistosynthError: bad pool, settings, out folder or resume (one line naming the cause);
            missing VGG16 weights when the perceptual loss is on.
    """
    options = resolve(AutoencoderOptions, preset, kind, **settings)
    out = Path(out).expanduser()
    pool = read_training_pool(data, classes, fingerprint=options.fingerprint, progress=progress)
    lpips_model = load_lpips(perceptual_weights) if options.perceptual else None
    accelerator = make_accelerator(options)
    torch.manual_seed(derive_seed(options.seed, "autoencoder-init"))
    model = Reconstruction(build_autoencoder(options))
    discriminator = PatchDiscriminator(3, options.disc_channels, options.disc_layers)
    rate = effective_learning_rate(options, accelerator.num_processes)
    optimizer = torch.optim.Adam(model.parameters(), lr=rate, betas=(0.5, 0.9))
    disc_optimizer = torch.optim.Adam(discriminator.parameters(), lr=rate, betas=(0.5, 0.9))
    warmup = options.lr_warmup_steps * accelerator.num_processes
    schedulers = [
        get_scheduler("constant_with_warmup", opt, num_warmup_steps=warmup)
        for opt in (optimizer, disc_optimizer)
    ]
    model, discriminator, optimizer, disc_optimizer, *schedulers = accelerator.prepare(
        model, discriminator, optimizer, disc_optimizer, *schedulers
    )
    if lpips_model is not None:
        lpips_model.to(accelerator.device)
    run = {"kind": KINDS[kind], "settings": to_record(options), "classes": pool.classes}
    run["data_fingerprint"] = pool.fingerprint
    start = resume_step(accelerator, out, resume, options, run)
    last_layer = accelerator.unwrap_model(model).autoencoder.decoder.conv_out.weight

    def step(images: torch.Tensor, labels: torch.Tensor, index: int) -> float:
        generator = torch.Generator(accelerator.device)
        generator.manual_seed(derive_seed(options.seed, "autoencoder-step", index, accelerator.process_index))
        with accelerator.autocast():
            reconstruction, regulariser = model(images, generator)
            rec = torch.abs(images - reconstruction)
            if lpips_model is not None:
                rec = rec + options.perceptual_weight * lpips_model(
                    images.contiguous(), reconstruction.contiguous()
                )
            if options.kind == "kl":
                nll = rec.sum() / rec.shape[0]
                loss = nll + options.kl_weight * regulariser
            else:
                nll = rec.mean()
                loss = nll + options.codebook_weight * regulariser
            adversarial = index >= options.disc_start
            if adversarial:
                generator_loss = -discriminator(reconstruction).mean()
                weight = adaptive_weight(nll, generator_loss, last_layer, options.disc_weight)
                loss = loss + weight * generator_loss
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        schedulers[0].step()
        if adversarial:
            with accelerator.autocast():
                disc_loss = hinge_loss(discriminator(images.detach()), discriminator(reconstruction.detach()))
            disc_optimizer.zero_grad(set_to_none=True)
            accelerator.backward(disc_loss)
            disc_optimizer.step()
            schedulers[1].step()
        return float(loss.detach())

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
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        autoencoder = accelerator.unwrap_model(model).autoencoder
        publish_model(out, autoencoder.save_pretrained)
        write_model_info(
            out,
            kind=KINDS[kind],
            classes=pool.classes,
            settings={**to_record(options), "effective_learning_rate": rate},
            fingerprint=pool.fingerprint,
            steps=done,
            extra={
                "learning_rate_rule": "base x batch_size x processes (CompVis main.py)"
                if options.scale_lr
                else "as given",
                "num_processes": accelerator.num_processes,
                "perceptual_weights": str(perceptual_weights)
                if perceptual_weights and options.perceptual
                else None,
            },
        )
    accelerator.wait_for_everyone()
    return out
