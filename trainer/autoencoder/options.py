"""The autoencoders' settings and presets: KL-f8 and VQ-f8 as the CompVis first stages.

The `paper` presets are CompVis `models/first_stage_models/kl-f8` and `vq-f8` (the paper trained
with the CompVis code), with the paper's epochs and batch size; `tiny` learns on a CPU in minutes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from histosynth.errors import HistosynthError
from histosynth.images import PAPER_SIZE
from trainer.core.options import PAPER_WORKERS, TrainOptions, resolve

KINDS = ("kl", "vq")


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
        perceptual: use the LPIPS (VGG16) term; off trains on L1 alone (the tiny presets' default,
            so that they run offline).
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

    def check(self) -> None:
        super().check()
        if self.kind not in KINDS:
            raise HistosynthError(f"--kind {self.kind!r}: expected kl or vq")


AUTOENCODER_PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    # CompVis models/first_stage_models/kl-f8/config.yaml with the paper's epochs and batch size.
    ("kl", "paper"): dict(
        num_workers=PAPER_WORKERS,
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
        num_workers=PAPER_WORKERS,
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
    # CPU runs in minutes, offline: no LPIPS unless asked for (it needs torchvision's VGG16 weights).
    ("kl", "tiny"): dict(kind="kl", perceptual=False),
    ("vq", "tiny"): dict(kind="vq", perceptual=False, attention_levels=(3,), disc_weight=0.6, disc_start=1),
}


def autoencoder_options(kind: str, preset: str = "tiny", **overrides: Any) -> AutoencoderOptions:
    """The settings of a `kind` autoencoder from `preset`, with the non-None `overrides`.

    Raises:
        HistosynthError: an unknown kind, preset or field, or a value out of range.
    """
    if kind not in KINDS:
        raise HistosynthError(f"--kind {kind!r}: expected kl or vq")
    presets = {
        name: {"kind": kind, **values} for (of, name), values in AUTOENCODER_PRESETS.items() if of == kind
    }
    return resolve(AutoencoderOptions, preset, presets, **overrides)
