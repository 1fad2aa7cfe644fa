"""`histosynth train ...`: the paper's autoencoders, latent diffusion model and SD fine-tune.

Every command takes the shared run options (preset, epochs, steps, batch, seed, learning rate,
checkpoints, resume, progress); options left unset take the preset's value. Run several GPUs or
nodes with `accelerate launch -m histosynth train ...`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Train the paper's generators (see README, Training).", no_args_is_help=True)
logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file otherwise

DataOption = Annotated[Path, typer.Option("--data", help="Training pool <DIR>/<CLASS>/<image>.")]
OutOption = Annotated[Path, typer.Option("--out", help="Model folder to write (with checkpoints/).")]
PresetOption = Annotated[
    str, typer.Option(help="'paper' (the paper's sizes and hyper-parameters) or 'tiny' (CPU smoke runs).")
]
EpochsOption = Annotated[int | None, typer.Option(help="Passes over the pool [preset].")]
MaxStepsOption = Annotated[
    int | None, typer.Option(help="Stop after N optimizer steps in total, counting those before a resume.")
]
BatchOption = Annotated[int | None, typer.Option(help="Images per step and GPU [preset].")]
SeedOption = Annotated[int, typer.Option(help="Seed of initialisation, data order, rotations and noise.")]
LearningRateOption = Annotated[
    float | None,
    typer.Option(
        help="Base learning rate [preset]; the optimizer uses base x batch size x GPUs "
        "(CompVis main.py) unless --no-scale-lr."
    ),
]
ScaleLrOption = Annotated[bool, typer.Option(help="Scale the base rate by batch size x GPUs, as CompVis.")]
WarmupOption = Annotated[int, typer.Option(help="Linear learning-rate warm-up steps (paper: 0).")]
SizeOption = Annotated[int | None, typer.Option(help="Resize tiles bilinearly to SIZE x SIZE [preset: 256].")]
CheckpointEveryOption = Annotated[int | None, typer.Option(help="Save a checkpoint every N steps [preset].")]
KeepOption = Annotated[int, typer.Option(help="Checkpoints to keep (the newest).")]
ResumeOption = Annotated[
    bool, typer.Option("--resume", help="Continue the run in --out from its newest checkpoint.")
]
PrecisionOption = Annotated[str, typer.Option(help="auto (fp16 on CUDA, none on CPU), no, fp16 or bf16.")]
WorkersOption = Annotated[int, typer.Option("--workers", help="Data-loading worker processes.")]
ClassesOption = Annotated[
    list[str] | None, typer.Option("--class", help="Class to train on; repeat (default: every class).")
]
ProgressOption = Annotated[bool | None, typer.Option(help="Show a progress bar (default: in a terminal).")]


@app.command("autoencoder")
def autoencoder(
    data: DataOption,
    out: OutOption,
    kind: Annotated[str, typer.Option(help="'kl' (AutoencoderKL, KL-f8) or 'vq' (VQModel, VQ-f8).")] = "kl",
    preset: PresetOption = "paper",
    epochs: EpochsOption = None,
    max_steps: MaxStepsOption = None,
    batch_size: BatchOption = None,
    seed: SeedOption = 0,
    learning_rate: LearningRateOption = None,
    scale_lr: ScaleLrOption = True,
    lr_warmup_steps: WarmupOption = 0,
    size: SizeOption = None,
    checkpoint_every: CheckpointEveryOption = None,
    keep_checkpoints: KeepOption = 2,
    resume: ResumeOption = False,
    mixed_precision: PrecisionOption = "auto",
    workers: WorkersOption = 0,
    classes: ClassesOption = None,
    perceptual: Annotated[
        bool, typer.Option(help="LPIPS (VGG16) perceptual loss; --no-perceptual trains on L1 alone.")
    ] = True,
    perceptual_weights: Annotated[
        Path | None,
        typer.Option(help="torchvision's vgg16-397923af.pth (default: $TORCH_HOME/hub/checkpoints/)."),
    ] = None,
    disc_start: Annotated[
        int | None, typer.Option(help="Step at which the discriminator joins [preset].")
    ] = None,
    progress: ProgressOption = None,
) -> None:
    """Train a KL-f8 or VQ-f8 autoencoder (CompVis losses: L1 + LPIPS + PatchGAN, KL or codebook)."""
    from trainer.autoencoder import train_autoencoder

    folder = train_autoencoder(
        data,
        out,
        kind=kind,
        preset=preset,
        resume=resume,
        perceptual_weights=perceptual_weights,
        classes=classes or None,
        progress=progress,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        seed=seed,
        learning_rate=learning_rate,
        scale_lr=scale_lr,
        lr_warmup_steps=lr_warmup_steps,
        size=size,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints,
        mixed_precision=mixed_precision,
        num_workers=workers,
        perceptual=perceptual,
        disc_start=disc_start,
    )
    typer.echo(f"wrote {folder}", err=True)


@app.command("ldm")
def ldm(
    autoencoder: Annotated[Path, typer.Option("--autoencoder", help="Model folder of `train autoencoder`.")],
    data: DataOption,
    out: OutOption,
    preset: PresetOption = "paper",
    epochs: EpochsOption = None,
    max_steps: MaxStepsOption = None,
    batch_size: BatchOption = None,
    seed: SeedOption = 0,
    learning_rate: LearningRateOption = None,
    scale_lr: ScaleLrOption = True,
    lr_warmup_steps: WarmupOption = 0,
    size: SizeOption = None,
    checkpoint_every: CheckpointEveryOption = None,
    keep_checkpoints: KeepOption = 2,
    resume: ResumeOption = False,
    mixed_precision: PrecisionOption = "auto",
    workers: WorkersOption = 0,
    classes: ClassesOption = None,
    cond_drop: Annotated[
        float | None,
        typer.Option(
            help="Probability of the null class per example, for classifier-free guidance [preset]."
        ),
    ] = None,
    progress: ProgressOption = None,
) -> None:
    """Train a class-conditional latent diffusion model on an autoencoder's latents (KLF8-DM, VQF8-DM)."""
    from trainer.ldm import train_ldm

    folder = train_ldm(
        autoencoder,
        data,
        out,
        preset=preset,
        resume=resume,
        classes=classes or None,
        progress=progress,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        seed=seed,
        learning_rate=learning_rate,
        scale_lr=scale_lr,
        lr_warmup_steps=lr_warmup_steps,
        size=size,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints,
        mixed_precision=mixed_precision,
        num_workers=workers,
        cond_drop=cond_drop,
    )
    typer.echo(f"wrote {folder}", err=True)


@app.command("sd-finetune")
def sd_finetune(
    base: Annotated[
        Path,
        typer.Option(
            "--base", help="Local diffusers Stable Diffusion v1.4 folder (unet/, vae/, text_encoder/, ...)."
        ),
    ],
    data: DataOption,
    out: OutOption,
    preset: PresetOption = "paper",
    epochs: EpochsOption = None,
    max_steps: MaxStepsOption = None,
    batch_size: BatchOption = None,
    seed: SeedOption = 0,
    learning_rate: LearningRateOption = None,
    scale_lr: ScaleLrOption = True,
    lr_warmup_steps: WarmupOption = 0,
    size: SizeOption = None,
    checkpoint_every: CheckpointEveryOption = None,
    keep_checkpoints: KeepOption = 2,
    resume: ResumeOption = False,
    mixed_precision: PrecisionOption = "auto",
    workers: WorkersOption = 0,
    classes: ClassesOption = None,
    prompt_template: Annotated[
        str | None, typer.Option(help="Prompt of a class; {class_name} is replaced by its folder name.")
    ] = None,
    cond_drop: Annotated[
        float | None, typer.Option(help="Probability of the empty prompt per example (SD v1: 0.1) [preset].")
    ] = None,
    progress: ProgressOption = None,
) -> None:
    """Fine-tune Stable Diffusion v1.4's U-Net on a pool, one prompt per class (VAE, text encoder frozen)."""
    from trainer.sd_finetune import train_sd_finetune

    folder = train_sd_finetune(
        base,
        data,
        out,
        preset=preset,
        resume=resume,
        classes=classes or None,
        progress=progress,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        seed=seed,
        learning_rate=learning_rate,
        scale_lr=scale_lr,
        lr_warmup_steps=lr_warmup_steps,
        size=size,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints,
        mixed_precision=mixed_precision,
        num_workers=workers,
        prompt_template=prompt_template,
        cond_drop=cond_drop,
    )
    typer.echo(f"wrote {folder}", err=True)
