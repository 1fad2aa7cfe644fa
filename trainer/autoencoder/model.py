"""The f=8 autoencoders as diffusers models, built from their settings.

Apart from training so that the CompVis importer (`trainer.compvis`) builds the same architecture
from a CompVis config without importing the training code.
"""

from __future__ import annotations

from typing import Any

from diffusers import AutoencoderKL, VQModel

from trainer.autoencoder.options import AutoencoderOptions


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
