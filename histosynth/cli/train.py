"""`histosynth train ...`: the paper's autoencoders, latent diffusion model, StyleGAN2 and SD fine-tune.

Every command takes the shared run options (preset, epochs, steps, batch, seed, learning rate,
checkpoints, resume, progress); options left unset take the preset's value. Run several GPUs or
nodes with `accelerate launch -m histosynth train ...`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from histosynth.cli.options import report

app = typer.Typer(help="Train the paper's generators (see README, Training).", no_args_is_help=True)
logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file otherwise

DataOption = Annotated[Path, typer.Option("--data", help="Training pool <DIR>/<CLASS>/<image>.")]
OutOption = Annotated[Path, typer.Option("--out", help="Model folder to write (with checkpoints/).")]
PresetOption = Annotated[
    str, typer.Option(help="'paper' (the paper's sizes and hyper-parameters) or 'tiny' (CPU smoke runs).")
]
EpochsOption = Annotated[int | None, typer.Option(help="Passes over the pool (default: preset).")]
MaxStepsOption = Annotated[
    int | None, typer.Option(help="Stop after N optimizer steps in total, counting those before a resume.")
]
BatchOption = Annotated[
    int | None,
    typer.Option(help="Images per optimizer step over all GPUs, split evenly among them (default: preset)."),
]
CompileOption = Annotated[
    bool,
    typer.Option(
        "--compile/--no-compile",
        help="torch.compile the networks (inductor): faster GPU steps after a first one that compiles.",
    ),
]
PerDeviceBatchOption = Annotated[
    int | None,
    typer.Option(
        help="Images per forward pass on each GPU, when its share of --batch-size does not fit: the "
        "gradients of the passes add up before each step (default: the whole share at once)."
    ),
]
SeedOption = Annotated[int, typer.Option(help="Seed of initialisation, data order, rotations and noise.")]
LearningRateOption = Annotated[
    float | None,
    typer.Option(
        help="Base learning rate (default: preset); the optimizer uses base x --batch-size "
        "(CompVis main.py: base x batch x GPUs) unless --no-scale-lr."
    ),
]
ScaleLrOption = Annotated[bool, typer.Option(help="Scale the base rate by the global batch, as CompVis.")]
WarmupOption = Annotated[int, typer.Option(help="Linear learning-rate warm-up steps (paper: 0).")]
SizeOption = Annotated[int | None, typer.Option(help="Resize tiles bilinearly to SIZE x SIZE (paper: 256).")]
CheckpointEveryOption = Annotated[
    int | None, typer.Option(help="Save a checkpoint every N steps (default: preset).")
]
KeepOption = Annotated[int, typer.Option(help="Checkpoints to keep (the newest).")]
ResumeOption = Annotated[
    bool, typer.Option("--resume", help="Continue the run in --out from its newest checkpoint.")
]
PrecisionOption = Annotated[
    str, typer.Option(help="auto (bf16 on a GPU that has it, else fp16; none on CPU), no, fp16 or bf16.")
]
WorkersOption = Annotated[
    int | None,
    typer.Option(
        "--workers",
        help="Data-loading worker processes (default: the machine's cores, at most 8, in the paper "
        "preset; 0 in tiny).",
    ),
]
ClassesOption = Annotated[
    list[str] | None, typer.Option("--class", help="Class to train on; repeat (default: every class).")
]
ProgressOption = Annotated[bool | None, typer.Option(help="Show a progress bar (default: in a terminal).")]
FingerprintOption = Annotated[
    str,
    typer.Option(
        help="How the training pool is fingerprinted for the model and --resume: 'names' (names and "
        "sizes) or 'sha256' (every file's bytes; reads the whole pool)."
    ),
]


@app.command("autoencoder")
def autoencoder(
    data: DataOption,
    out: OutOption,
    kind: Annotated[str, typer.Option(help="'kl' (AutoencoderKL, KL-f8) or 'vq' (VQModel, VQ-f8).")] = "kl",
    preset: PresetOption = "paper",
    epochs: EpochsOption = None,
    max_steps: MaxStepsOption = None,
    batch_size: BatchOption = None,
    per_device_batch_size: PerDeviceBatchOption = None,
    compile_model: CompileOption = False,
    seed: SeedOption = 0,
    learning_rate: LearningRateOption = None,
    scale_lr: ScaleLrOption = True,
    lr_warmup_steps: WarmupOption = 0,
    size: SizeOption = None,
    checkpoint_every: CheckpointEveryOption = None,
    keep_checkpoints: KeepOption = 2,
    resume: ResumeOption = False,
    mixed_precision: PrecisionOption = "auto",
    workers: WorkersOption = None,
    classes: ClassesOption = None,
    perceptual: Annotated[
        bool | None,
        typer.Option(
            help="LPIPS (VGG16) perceptual loss; --no-perceptual trains on L1 alone. Default: on in the "
            "paper preset; off in tiny (offline) unless --perceptual-weights is given."
        ),
    ] = None,
    perceptual_weights: Annotated[
        Path | None,
        typer.Option(help="torchvision's vgg16-397923af.pth (default: $TORCH_HOME/hub/checkpoints/)."),
    ] = None,
    disc_start: Annotated[
        int | None, typer.Option(help="Step at which the discriminator joins (default: preset).")
    ] = None,
    fingerprint: FingerprintOption = "names",
    progress: ProgressOption = None,
) -> None:
    """Train a KL-f8 or VQ-f8 autoencoder (CompVis losses: L1 + LPIPS + PatchGAN, KL or codebook)."""
    from trainer.autoencoder.options import autoencoder_options
    from trainer.autoencoder.train import AutoencoderSettings, train_autoencoder

    options = autoencoder_options(
        kind,
        preset,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        per_device_batch_size=per_device_batch_size,
        compile_model=compile_model,
        seed=seed,
        learning_rate=learning_rate,
        scale_lr=scale_lr,
        lr_warmup_steps=lr_warmup_steps,
        size=size,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints,
        mixed_precision=mixed_precision,
        num_workers=workers,
        fingerprint=fingerprint,
        perceptual=perceptual if perceptual is not None or perceptual_weights is None else True,
        disc_start=disc_start,
    )
    settings = AutoencoderSettings(
        options=options,
        resume=resume,
        perceptual_weights=perceptual_weights,
        classes=tuple(classes) if classes else None,
        progress=progress,
    )
    folder = train_autoencoder(data, out, settings)
    report(f"wrote {folder}")


@app.command("ldm")
def ldm(
    autoencoder: Annotated[Path, typer.Option("--autoencoder", help="Model folder of `train autoencoder`.")],
    data: DataOption,
    out: OutOption,
    preset: PresetOption = "paper",
    epochs: EpochsOption = None,
    max_steps: MaxStepsOption = None,
    batch_size: BatchOption = None,
    per_device_batch_size: PerDeviceBatchOption = None,
    compile_model: CompileOption = False,
    seed: SeedOption = 0,
    learning_rate: LearningRateOption = None,
    scale_lr: ScaleLrOption = True,
    lr_warmup_steps: WarmupOption = 0,
    size: SizeOption = None,
    checkpoint_every: CheckpointEveryOption = None,
    keep_checkpoints: KeepOption = 2,
    resume: ResumeOption = False,
    mixed_precision: PrecisionOption = "auto",
    workers: WorkersOption = None,
    classes: ClassesOption = None,
    cond_drop: Annotated[
        float | None,
        typer.Option(
            help="Probability of the null class per example, for classifier-free guidance (default: preset)."
        ),
    ] = None,
    fingerprint: FingerprintOption = "names",
    progress: ProgressOption = None,
) -> None:
    """Train a class-conditional latent diffusion model on an autoencoder's latents (KLF8-DM, VQF8-DM)."""
    from trainer.diffusion.ldm import LDMSettings, train_ldm
    from trainer.diffusion.options import ldm_options

    options = ldm_options(
        preset,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        per_device_batch_size=per_device_batch_size,
        compile_model=compile_model,
        seed=seed,
        learning_rate=learning_rate,
        scale_lr=scale_lr,
        lr_warmup_steps=lr_warmup_steps,
        size=size,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints,
        mixed_precision=mixed_precision,
        num_workers=workers,
        fingerprint=fingerprint,
        cond_drop=cond_drop,
    )
    settings = LDMSettings(
        options=options, resume=resume, classes=tuple(classes) if classes else None, progress=progress
    )
    folder = train_ldm(autoencoder, data, out, settings)
    report(f"wrote {folder}")


@app.command("stylegan2")
def stylegan2(
    data: DataOption,
    out: OutOption,
    preset: PresetOption = "paper",
    epochs: EpochsOption = None,
    max_steps: MaxStepsOption = None,
    batch_size: BatchOption = None,
    per_device_batch_size: PerDeviceBatchOption = None,
    seed: SeedOption = 0,
    learning_rate: Annotated[
        float | None,
        typer.Option(help="Adam's rate for G and D (paper: 0.001), before the lazy correction."),
    ] = None,
    size: SizeOption = None,
    checkpoint_every: Annotated[
        int | None,
        typer.Option(help="Check for mode collapse and save a checkpoint every N steps (default: preset)."),
    ] = None,
    keep_checkpoints: KeepOption = 2,
    resume: ResumeOption = False,
    mixed_precision: Annotated[
        str, typer.Option(help="no or bf16 (fp16 cannot scale R1's gradients).")
    ] = "no",
    workers: WorkersOption = None,
    classes: ClassesOption = None,
    r1_gamma: Annotated[float | None, typer.Option(help="R1 weight gamma (paper: 0.5).")] = None,
    pl_weight: Annotated[float | None, typer.Option(help="Path-length weight (paper: 2).")] = None,
    style_mixing: Annotated[float | None, typer.Option(help="Style-mixing probability (paper: 0.9).")] = None,
    ema_half_life: Annotated[
        int | None,
        typer.Option(help="Images over which the EMA generator's past weight halves (default: preset)."),
    ] = None,
    augment: Annotated[bool, typer.Option(help="Adaptive discriminator augmentation (ADA).")] = True,
    ada_target: Annotated[float | None, typer.Option(help="ADA's target r_t (paper: 0.6).")] = None,
    min_diversity: Annotated[
        float | None,
        typer.Option(help="Collapse when a class's diversity ratio falls below this (default: preset)."),
    ] = None,
    max_gap: Annotated[
        float | None,
        typer.Option(help="Collapse when D's real-minus-fake mean logit exceeds this (default: preset)."),
    ] = None,
    max_rollbacks: Annotated[
        int | None,
        typer.Option(help="Rollbacks to the last good checkpoint before giving up (paper: 3)."),
    ] = None,
    fingerprint: FingerprintOption = "names",
    progress: ProgressOption = None,
) -> None:
    """Train a class-conditional StyleGAN2 with ADA that rolls back on mode collapse."""
    from trainer.stylegan2.options import stylegan2_options
    from trainer.stylegan2.train import StyleGAN2Settings, train_stylegan2

    options = stylegan2_options(
        preset,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        per_device_batch_size=per_device_batch_size,
        seed=seed,
        learning_rate=learning_rate,
        size=size,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints,
        mixed_precision=mixed_precision,
        num_workers=workers,
        fingerprint=fingerprint,
        r1_gamma=r1_gamma,
        pl_weight=pl_weight,
        style_mixing=style_mixing,
        ema_half_life=ema_half_life,
        augment=augment,
        ada_target=ada_target,
        min_diversity=min_diversity,
        max_gap=max_gap,
        max_rollbacks=max_rollbacks,
    )
    settings = StyleGAN2Settings(
        options=options, resume=resume, classes=tuple(classes) if classes else None, progress=progress
    )
    folder = train_stylegan2(data, out, settings)
    report(f"wrote {folder}")


@app.command("classifier")
def classifier(
    train: Annotated[
        list[str],
        typer.Option("--train", help="Training source NAME=POOL; repeat. 'real' is real, others synthetic."),
    ],
    test: Annotated[Path, typer.Option("--test", help="Test pool; its classes are the labels.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder: tables, figures and models/.")],
    arms: Annotated[
        str, typer.Option(help="Arms, comma-separated: real, synthetic, combined (the paper's three).")
    ] = "real,synthetic,combined",
    seeds: Annotated[int, typer.Option(help="Repeats of every arm (SEED, SEED+1, ...); mean ± std.")] = 1,
    caps: Annotated[
        list[str] | None, typer.Option("--cap", help="NAME=N: at most N tiles per class of a source; repeat.")
    ] = None,
    pretrained: Annotated[
        str | None,
        typer.Option(
            help="torchvision's ImageNet weights, e.g. resnet34-b627a593.pth "
            "(default: $TORCH_HOME/hub/checkpoints/), or 'none' to train from scratch."
        ),
    ] = None,
    stain_reference: Annotated[
        Path | None, typer.Option(help="Macenko reference tile (default: the H&E tile histosynth ships).")
    ] = None,
    stain_normalize: Annotated[
        bool, typer.Option(help="Macenko-normalise training and test tiles to the reference.")
    ] = True,
    valid_fraction: Annotated[
        float | None, typer.Option(help="Share of each source's tiles per class held out for validation.")
    ] = None,
    arch: Annotated[
        str | None,
        typer.Option(
            help="resnet18, resnet34 or resnet50 (ImageNet weights from --pretrained), or xresnet18_narrow "
            "(from scratch only). Paper: resnet34; tiny: xresnet18_narrow."
        ),
    ] = None,
    freeze_body: Annotated[
        bool, typer.Option(help="With ImageNet weights, train only the head (fastai's frozen start).")
    ] = False,
    preset: PresetOption = "paper",
    epochs: EpochsOption = None,
    max_steps: Annotated[
        int | None,
        typer.Option(help="Stop each fit after N optimizer steps, counting those before a resume."),
    ] = None,
    batch_size: BatchOption = None,
    seed: SeedOption = 0,
    learning_rate: Annotated[
        float | None, typer.Option(help="Maximal one-cycle learning rate (paper: 1e-3), as given.")
    ] = None,
    size: Annotated[int | None, typer.Option(help="Tiles resized bilinearly to SIZE (paper: 224).")] = None,
    checkpoint_every: Annotated[
        int | None,
        typer.Option(
            help="Save each fit's checkpoint every N steps, in checkpoints/ARM-seedS/ (default: preset)."
        ),
    ] = None,
    keep_checkpoints: KeepOption = 2,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue every arm and seed from its newest checkpoint; finished ones are reused.",
        ),
    ] = False,
    keep_finished_checkpoints: Annotated[
        bool,
        typer.Option(
            "--keep-finished-checkpoints",
            help="Keep a fit's checkpoints after its last epoch (default: removed; they only serve "
            "--resume of an unfinished fit; a ResNet34 fit keeps 84 MB, with its checkpoints 670 MB).",
        ),
    ] = False,
    mixed_precision: PrecisionOption = "auto",
    workers: WorkersOption = None,
    fingerprint: FingerprintOption = "names",
    progress: ProgressOption = None,
) -> None:
    """Train a ResNet34 tissue classifier per arm and seed on real, synthetic or combined tiles (Table 3)."""
    from histosynth.cli.options import parse_named_dirs
    from trainer.classifier.arms import parse_caps
    from trainer.classifier.experiment import ClassifierSettings, train_classifier
    from trainer.classifier.options import classifier_options

    sources = parse_named_dirs(train, "--train")
    options = classifier_options(
        preset,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        seed=seed,
        learning_rate=learning_rate,
        size=size,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints,
        mixed_precision=mixed_precision,
        num_workers=workers,
        fingerprint=fingerprint,
        stain_normalize=stain_normalize,
        valid_fraction=valid_fraction,
        arch=arch,
        freeze_body=freeze_body,
    )
    settings = ClassifierSettings(
        options=options,
        arms=arms,
        seeds=seeds,
        caps=parse_caps(caps or [], sources),
        pretrained=pretrained,
        stain_reference=stain_reference,
        resume=resume,
        keep_finished_checkpoints=keep_finished_checkpoints,
        progress=progress,
    )
    result = train_classifier(sources, test, out, settings)
    report(f"wrote {len(result.files)} files and {len(result.models)} models to {result.out}")


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
    per_device_batch_size: PerDeviceBatchOption = None,
    compile_model: CompileOption = False,
    seed: SeedOption = 0,
    learning_rate: LearningRateOption = None,
    scale_lr: ScaleLrOption = True,
    lr_warmup_steps: WarmupOption = 0,
    size: SizeOption = None,
    checkpoint_every: CheckpointEveryOption = None,
    keep_checkpoints: KeepOption = 2,
    resume: ResumeOption = False,
    mixed_precision: PrecisionOption = "auto",
    workers: WorkersOption = None,
    classes: ClassesOption = None,
    prompt_template: Annotated[
        str | None, typer.Option(help="Prompt of a class; {class_name} is replaced by its folder name.")
    ] = None,
    cond_drop: Annotated[
        float | None,
        typer.Option(help="Probability of the empty prompt per example (SD v1: 0.1) (default: preset)."),
    ] = None,
    fingerprint: FingerprintOption = "names",
    progress: ProgressOption = None,
) -> None:
    """Fine-tune Stable Diffusion v1.4's U-Net on a pool, one prompt per class (VAE, text encoder frozen)."""
    from trainer.diffusion.options import sd_finetune_options
    from trainer.diffusion.sd_finetune import SDFinetuneSettings, train_sd_finetune

    options = sd_finetune_options(
        preset,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        per_device_batch_size=per_device_batch_size,
        compile_model=compile_model,
        seed=seed,
        learning_rate=learning_rate,
        scale_lr=scale_lr,
        lr_warmup_steps=lr_warmup_steps,
        size=size,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints,
        mixed_precision=mixed_precision,
        num_workers=workers,
        fingerprint=fingerprint,
        prompt_template=prompt_template,
        cond_drop=cond_drop,
    )
    settings = SDFinetuneSettings(
        options=options, resume=resume, classes=tuple(classes) if classes else None, progress=progress
    )
    folder = train_sd_finetune(base, data, out, settings)
    report(f"wrote {folder}")
