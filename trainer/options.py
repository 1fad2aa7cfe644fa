"""Training settings and the `paper` and `tiny` presets of every model.

A run is described by one frozen dataclass: the options every `train` command shares
(`TrainOptions`) plus the model's own (`AutoencoderOptions`, `LDMOptions`). A preset fills every
field; the command line overrides a few by name (`resolve`). The resolved settings are written
into `histosynth.json` and into each checkpoint, so a model folder says exactly how it was made
and `--resume` can refuse a run whose settings changed.

The `paper` presets are the CompVis configurations the paper trained with (Niehues et al. 2024
used the CompVis latent-diffusion code): `models/first_stage_models/kl-f8` and `vq-f8` for the
autoencoders, `configs/latent-diffusion/cin-ldm-vq-f8.yaml` for the class-conditional U-Net, with
the paper's epochs and batch sizes. Learning rates follow CompVis `main.py`: the configured
`base_learning_rate` is multiplied by batch size x number of processes (GPUs) x gradient
accumulation (1 here), so the paper's autoencoders on two GPUs ran at 4.5e-6 x 10 x 2 = 9e-5 and
its diffusion model at 1e-6 x 64 x 2 = 1.28e-4. `--no-scale-lr` takes the rate as given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from histosynth.errors import HistosynthError
from histosynth.images import PAPER_SIZE

PRESETS = ("paper", "tiny")
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
# How a training pool is fingerprinted (`trainer.data.pool_fingerprint`): by relative names and
# byte sizes (one `stat` per file), or by the sha256 of every file (which also sees an edited pixel).
FINGERPRINTS = ("names", "sha256")


@dataclass(frozen=True)
class TrainOptions:
    """What every `train` command shares.

    Attributes:
        preset: `paper` or `tiny`, the preset the other fields started from.
        seed: seeds the data order, the rotations and every noise draw (`histosynth.sampling`).
        epochs: passes over the training pool.
        max_steps: stop after this many optimizer steps in total, counting those before a
            resume; None runs all epochs.
        batch_size: images per optimizer step and process (CompVis: per GPU).
        learning_rate: the base rate; see `effective_learning_rate`.
        scale_lr: multiply by batch size x processes, as CompVis `main.py` does by default.
        lr_warmup_steps: linear warm-up of the rate (0 in the paper: constant rate).
        size: tiles are resized bilinearly to size x size (256 in the paper: 224 -> 256).
        checkpoint_every: save a resumable checkpoint every this many steps (and at the end).
        keep_checkpoints: how many of the newest checkpoints to keep.
        mixed_precision: `auto` (fp16 on CUDA, none on CPU), `no`, `fp16` or `bf16`.
        num_workers: data-loading worker processes.
        fingerprint: `names` or `sha256`: how the training pool is fingerprinted for the
            model folder and compared on `--resume`.
    """

    preset: str = "tiny"
    seed: int = 0
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 2
    learning_rate: float = 1e-4
    scale_lr: bool = True
    lr_warmup_steps: int = 0
    size: int = 32
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    mixed_precision: str = "auto"
    num_workers: int = 0
    fingerprint: str = "names"


@dataclass(frozen=True)
class AutoencoderOptions(TrainOptions):
    """An f=8 autoencoder trained as the CompVis first stages (`LPIPSWithDiscriminator`).

    Attributes:
        kind: `kl` (diffusers `AutoencoderKL`) or `vq` (`VQModel`).
        block_out_channels: channels per resolution level; 4 levels give f=8.
        layers_per_block: residual blocks per level.
        attention_levels: levels (0 = full resolution) whose blocks carry self-attention
            (CompVis vq-f8: attention at resolution 32 of 256, the last level).
        norm_num_groups: GroupNorm groups.
        latent_channels: 4 in both paper models.
        num_vq_embeddings: codebook size (VQ only; 16384 in vq-f8).
        kl_weight: weight of the KL term (KL only; 1e-6).
        codebook_weight: weight of the codebook and commitment loss (VQ only; 1.0).
        perceptual: use the LPIPS (VGG16) term; `--no-perceptual` trains on L1 alone.
        perceptual_weight: weight of LPIPS (1.0).
        disc_start: the patch discriminator joins the loss from this global step on.
        disc_weight: scale of its adaptive weight.
        disc_layers: strided layers of the PatchGAN discriminator.
        disc_channels: its first layer's channels.
    """

    kind: str = "kl"
    block_out_channels: tuple[int, ...] = (8, 16, 16, 16)
    layers_per_block: int = 1
    attention_levels: tuple[int, ...] = ()
    norm_num_groups: int = 8
    latent_channels: int = 4
    num_vq_embeddings: int = 64
    kl_weight: float = 1e-6
    codebook_weight: float = 1.0
    perceptual: bool = True
    perceptual_weight: float = 1.0
    disc_start: int = 2
    disc_weight: float = 0.5
    disc_layers: int = 2
    disc_channels: int = 8


@dataclass(frozen=True)
class LDMOptions(TrainOptions):
    """A class-conditional latent diffusion model (CompVis `LatentDiffusion`, cin-ldm-vq-f8).

    Attributes:
        block_out_channels: U-Net channels per level (model_channels x channel_mult).
        layers_per_block: residual blocks per level.
        attention_heads: heads per level (CompVis: channels / num_head_channels 32); every
            level carries a cross-attention transformer, as attention_resolutions 4,2,1 gives.
        norm_num_groups: GroupNorm groups.
        class_embed_dim: the learned class embedding the U-Net cross-attends to (512).
        cond_drop: probability that a training example gets the null class, which makes
            classifier-free guidance possible (0 in CompVis; guidance then needs a retrain).
        num_train_timesteps: T (1000).
        beta_start: first beta (0.0015); betas are linear in sqrt space.
        beta_end: last beta (0.0195).
        ema_decay: decay of the EMA weights used for sampling (0.9999, CompVis `LitEma`).
        cache_latents: encode each tile in its 4 rotations once and train from that cache.
    """

    block_out_channels: tuple[int, ...] = (16, 32)
    layers_per_block: int = 1
    attention_heads: tuple[int, ...] = (2, 4)
    norm_num_groups: int = 8
    class_embed_dim: int = 16
    cond_drop: float = 0.2
    num_train_timesteps: int = 1000
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    ema_decay: float = 0.9999
    cache_latents: bool = True


@dataclass(frozen=True)
class ClassifierOptions(TrainOptions):
    """The downstream tissue classifier (the paper's Table 3): fastai `vision_learner`, ResNet34.

    Attributes:
        arch: the torchvision architecture (`resnet34`, the paper's).
        valid_fraction: share of each source's tiles per class held out, seeded and
            stratified, to pick the checkpoint with the lowest validation loss.
        freeze_body: with ImageNet weights, train only the head (fastai's frozen start);
            False trains the whole network.
        stain_normalize: Macenko-normalise training and test tiles to the stain reference.
    """

    arch: str = "resnet34"
    valid_fraction: float = 0.2
    freeze_body: bool = False
    stain_normalize: bool = True


AUTOENCODER_PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    # CompVis models/first_stage_models/kl-f8/config.yaml with the paper's epochs and batch size.
    ("kl", "paper"): dict(
        epochs=10,
        batch_size=10,
        learning_rate=4.5e-6,
        size=PAPER_SIZE,
        checkpoint_every=5000,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        attention_levels=(),
        norm_num_groups=32,
        latent_channels=4,
        kl_weight=1e-6,
        disc_start=50001,
        disc_weight=0.5,
        disc_layers=3,
        disc_channels=64,
    ),
    # CompVis models/first_stage_models/vq-f8/config.yaml (ch_mult 1,2,2,4, attention at 32 px).
    ("vq", "paper"): dict(
        epochs=10,
        batch_size=10,
        learning_rate=4.5e-6,
        size=PAPER_SIZE,
        checkpoint_every=5000,
        block_out_channels=(128, 256, 256, 512),
        layers_per_block=2,
        attention_levels=(3,),
        norm_num_groups=32,
        latent_channels=4,
        num_vq_embeddings=16384,
        codebook_weight=1.0,
        disc_start=1,
        disc_weight=0.6,
        disc_layers=2,
        disc_channels=64,
    ),
    ("kl", "tiny"): dict(kind="kl"),
    ("vq", "tiny"): dict(kind="vq", attention_levels=(3,), disc_weight=0.6, disc_start=1),
}

LDM_PRESETS: dict[str, dict[str, Any]] = {
    # CompVis configs/latent-diffusion/cin-ldm-vq-f8.yaml: model_channels 256, channel_mult 1,2,4,
    # attention at every level, num_head_channels 32, context_dim 512; the paper's 30 epochs, batch 64.
    "paper": dict(
        epochs=30,
        batch_size=64,
        learning_rate=1e-6,
        size=PAPER_SIZE,
        checkpoint_every=5000,
        block_out_channels=(256, 512, 1024),
        layers_per_block=2,
        attention_heads=(8, 16, 32),
        norm_num_groups=32,
        class_embed_dim=512,
        cond_drop=0.0,
    ),
    "tiny": dict(),
}

CLASSIFIER_PRESETS: dict[str, dict[str, Any]] = {
    # The paper's classifier: 15 epochs, batch 64, Adam at 1e-3 with fastai's one-cycle schedule,
    # taken as given (no CompVis scaling); 224 px, the native size of NCT-CRC-HE-100K tiles.
    "paper": dict(epochs=15, batch_size=64, learning_rate=1e-3, scale_lr=False, size=224),
    # CPU smoke runs: ResNet18 (half ResNet34's weights to initialise and save), 32 px, 1 epoch.
    "tiny": dict(arch="resnet18", epochs=1, batch_size=8, learning_rate=1e-3, scale_lr=False, size=32),
}

OptionsT = TypeVar("OptionsT", bound=TrainOptions)


def resolve(
    cls: type[OptionsT],
    preset: str,
    kind: str | None = None,
    *,
    presets: dict[str, dict[str, Any]] | None = None,
    **overrides: Any,
) -> OptionsT:
    """Settings of `cls` from a preset, with the non-None `overrides` replacing preset values.

    Args:
        cls: `AutoencoderOptions`, `LDMOptions`, `ClassifierOptions` or another model's
            `TrainOptions` subclass.
        preset: `paper` or `tiny`.
        kind: the autoencoder kind (`kl` or `vq`); None for the LDM.
        presets: the preset table of a model defined in its own module (e.g.
            `trainer.stylegan2_train.STYLEGAN2_PRESETS`); None for the autoencoders and the LDM.
        overrides: field values from the command line; None means "the preset's".

    Raises:
        HistosynthError: an unknown preset, kind or field, or a value out of range.
    """
    if preset not in PRESETS:
        raise HistosynthError(f"--preset {preset!r}: expected one of {', '.join(PRESETS)}")
    if cls is AutoencoderOptions:
        if kind not in ("kl", "vq"):
            raise HistosynthError(f"--kind {kind!r}: expected kl or vq")
        values = {"kind": kind, **AUTOENCODER_PRESETS[(kind, preset)]}
    elif presets is not None:
        values = dict(presets[preset])
    elif cls is ClassifierOptions:
        values = dict(CLASSIFIER_PRESETS[preset])
    else:
        values = dict(LDM_PRESETS[preset])
    names = {item.name for item in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise HistosynthError(f"unknown setting {unknown[0]!r}")
    values.update({name: value for name, value in overrides.items() if value is not None})
    options = cls(preset=preset, **values)
    check_options(options)
    return options


def effective_learning_rate(options: TrainOptions, num_processes: int) -> float:
    """The optimizer's rate: base x batch size x processes when `scale_lr` (CompVis `main.py`)."""
    if not options.scale_lr:
        return options.learning_rate
    return options.learning_rate * options.batch_size * num_processes


def to_record(options: TrainOptions) -> dict[str, Any]:
    """The settings as JSON-ready values (tuples become lists)."""
    return {key: list(value) if isinstance(value, tuple) else value for key, value in _items(options)}


def from_record(cls: type[OptionsT], record: dict[str, Any]) -> OptionsT:
    """Rebuild settings written by `to_record` (lists become tuples again)."""
    names = {item.name: item for item in dataclasses.fields(cls)}
    values = {key: tuple(value) if isinstance(value, list) else value for key, value in record.items()}
    return cls(**{key: value for key, value in values.items() if key in names})


# Settings that may change between a run and its resume without changing its result
# (`max_rollbacks`: StyleGAN2's collapse guard may be given more tries after it gave up).
RESUMABLE_CHANGES = (
    "epochs",
    "max_steps",
    "checkpoint_every",
    "keep_checkpoints",
    "num_workers",
    "max_rollbacks",
)


def changed_settings(
    before: TrainOptions, after: TrainOptions, allowed: Sequence[str] = RESUMABLE_CHANGES
) -> list[str]:
    """Fields whose values differ, other than those a resume may change (`allowed`).

    A model whose schedule spans the whole run (the classifier's one-cycle rate) passes
    `allowed` without `epochs`, since more epochs would change every step already taken.
    """
    old, new = dict(_items(before)), dict(_items(after))
    return [key for key in old if key not in allowed and old[key] != new.get(key)]


def _items(options: TrainOptions) -> list[tuple[str, Any]]:
    return [(item.name, getattr(options, item.name)) for item in dataclasses.fields(options)]


def check_options(options: TrainOptions) -> None:
    """Refuse settings out of range, as `resolve` does; for settings built or replaced by hand.

    Raises:
        HistosynthError: naming the option and its value.
    """
    positive = ["epochs", "batch_size", "size", "checkpoint_every", "keep_checkpoints"]
    for name in positive:
        if getattr(options, name) < 1:
            raise HistosynthError(f"--{name.replace('_', '-')} {getattr(options, name)}: must be at least 1")
    if options.max_steps is not None and options.max_steps < 1:
        raise HistosynthError(f"--max-steps {options.max_steps}: must be at least 1")
    if options.learning_rate <= 0:
        raise HistosynthError(f"--learning-rate {options.learning_rate}: must be positive")
    if options.mixed_precision not in MIXED_PRECISION:
        raise HistosynthError(
            f"--mixed-precision {options.mixed_precision!r}: expected one of {', '.join(MIXED_PRECISION)}"
        )
    if options.fingerprint not in FINGERPRINTS:
        raise HistosynthError(
            f"--fingerprint {options.fingerprint!r}: expected one of {', '.join(FINGERPRINTS)}"
        )
    if options.size % 8:
        raise HistosynthError(f"--size {options.size}: must be a multiple of 8 (f=8 autoencoders)")
    if isinstance(options, ClassifierOptions) and not 0.0 < options.valid_fraction < 1.0:
        raise HistosynthError(f"--valid-fraction {options.valid_fraction}: must lie in (0, 1)")
    if isinstance(options, LDMOptions) and not 0.0 <= options.cond_drop < 1.0:
        raise HistosynthError(f"--cond-drop {options.cond_drop}: must lie in [0, 1)")
