"""The diffusion models' settings and presets: the class-conditional LDM and the SD fine-tune.

The LDM's `paper` preset is CompVis `configs/latent-diffusion/cin-ldm-vq-f8.yaml` with the paper's
epochs and batch size (Niehues et al. 2024 trained with the CompVis code); the SD fine-tune's is
the paper's 20 epochs at batch 16. `tiny` presets learn on a CPU in minutes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from histosynth.errors import HistosynthError
from histosynth.images import PAPER_SIZE
from trainer.core.options import PAPER_WORKERS, TrainOptions, resolve


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

    def check(self) -> None:
        super().check()
        if not 0.0 <= self.cond_drop < 1.0:
            raise HistosynthError(f"--cond-drop {self.cond_drop}: must lie in [0, 1)")


LDM_PRESETS: dict[str, dict[str, Any]] = {
    # CompVis configs/latent-diffusion/cin-ldm-vq-f8.yaml: model_channels 256, channel_mult 1,2,4,
    # attention at every level, num_head_channels 32, context_dim 512; the paper's 30 epochs, batch 64.
    "paper": dict(
        num_workers=PAPER_WORKERS,
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


@dataclass(frozen=True)
class SDFinetuneOptions(TrainOptions):
    """Fine-tuning the U-Net of Stable Diffusion v1.4 on a pool, one prompt per class.

    Attributes:
        prompt_template: the prompt of a class; `{class_name}` is replaced by its folder name.
        cond_drop: probability that an example gets the empty prompt (SD v1 was trained with
            0.1); keeps the unconditional branch that classifier-free guidance uses.
    """

    prompt_template: str = "an H&E stained histology image of {class_name} tissue"
    cond_drop: float = 0.1

    def check(self) -> None:
        super().check()
        if not 0.0 <= self.cond_drop < 1.0:
            raise HistosynthError(f"--cond-drop {self.cond_drop}: must lie in [0, 1)")


SD_PRESETS: dict[str, dict[str, Any]] = {
    # The paper: 20 epochs, batch 16, lr 1e-6, tiles 224 -> 256 (32 x 32 latents).
    "paper": dict(
        num_workers=PAPER_WORKERS,
        epochs=20,
        batch_size=16,
        learning_rate=1e-6,
        size=PAPER_SIZE,
        checkpoint_every=5000,
    ),
    "tiny": dict(),
}


def ldm_options(preset: str = "tiny", **overrides: Any) -> LDMOptions:
    """The LDM's settings from `preset`, with the non-None `overrides` (`resolve`)."""
    return resolve(LDMOptions, preset, LDM_PRESETS, **overrides)


def sd_finetune_options(preset: str = "tiny", **overrides: Any) -> SDFinetuneOptions:
    """The SD fine-tune's settings from `preset`, with the non-None `overrides` (`resolve`)."""
    return resolve(SDFinetuneOptions, preset, SD_PRESETS, **overrides)
