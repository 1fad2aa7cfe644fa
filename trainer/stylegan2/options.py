"""StyleGAN2's settings and presets: the paper's class-conditional StyleGAN2 with ADA."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from histosynth.errors import HistosynthError
from histosynth.images import PAPER_SIZE
from trainer.core.options import PAPER_WORKERS, TrainOptions, resolve


@dataclass(frozen=True)
class StyleGAN2Options(TrainOptions):
    """A class-conditional StyleGAN2 with ADA (the paper's fourth generator).

    Attributes:
        z_dim, w_dim, embed_dim: latent, intermediate latent and class-embedding sizes (512).
        mapping_layers: layers of the mapping network (8).
        channel_base, channel_max: feature maps channel_base / resolution, at most channel_max.
        mbstd_group: minibatch-standard-deviation group size (4).
        reduced_precision_resolutions: the highest resolutions that train in bfloat16 on a GPU
            that has it (StyleGAN2-ADA's mixed precision for its 4 highest, there fp16).
        conv_clamp: every layer's output limited to +- this (256 beside reduced precision; None).
        r1_gamma: R1 weight gamma (0.5 in the paper).
        r1_interval: D steps per R1 step (16).
        pl_weight: path-length weight (2).
        pl_interval: G steps per path-length step (4).
        pl_decay: the running mean's update rate (0.01).
        pl_batch_shrink: the path-length batch is the batch divided by this (2).
        style_mixing: probability of style mixing per batch (0.9).
        beta1, beta2, adam_eps: Adam's settings (0, 0.99, 1e-8).
        ema_half_life: images over which the EMA generator's weight of the past halves (10,000).
        augment: use ADA.
        ada_target: r_t that ADA steers toward (0.6).
        ada_interval: steps between updates of p (4).
        ada_speed: images over which p can go from 0 to 1 (500,000).
        monitor_samples: generated and real images per class the collapse guard compares.
        min_diversity: collapse when a class's diversity ratio falls below this.
        max_gap: collapse when D's real-minus-fake mean logit exceeds this.
        monitor_start: checks before this step never fail.
        max_rollbacks: rollbacks before the run gives up.
        rollback_lr_factor: learning-rate factor per rollback.
        rollback_gamma_factor: R1 gamma factor per rollback.
    """

    scale_lr: bool = False
    mixed_precision: str = "no"
    learning_rate: float = 0.002
    batch_size: int = 4
    z_dim: int = 32
    w_dim: int = 32
    embed_dim: int = 32
    mapping_layers: int = 2
    channel_base: int = 512
    channel_max: int = 32
    mbstd_group: int = 4
    reduced_precision_resolutions: int = 0
    conv_clamp: float | None = None
    r1_gamma: float = 0.5
    r1_interval: int = 16
    pl_weight: float = 2.0
    pl_interval: int = 4
    pl_decay: float = 0.01
    pl_batch_shrink: int = 2
    style_mixing: float = 0.9
    beta1: float = 0.0
    beta2: float = 0.99
    adam_eps: float = 1e-8
    ema_half_life: int = 40
    augment: bool = True
    ada_target: float = 0.6
    ada_interval: int = 4
    ada_speed: int = 2000
    monitor_samples: int = 4
    min_diversity: float = 0.05
    max_gap: float = 20.0
    monitor_start: int = 0
    max_rollbacks: int = 3
    rollback_lr_factor: float = 0.5
    rollback_gamma_factor: float = 2.0

    def check(self) -> None:
        super().check()
        if self.size < 8 or self.size & (self.size - 1):
            raise HistosynthError(f"--size {self.size}: StyleGAN2 needs a power of two of at least 8")
        if self.mixed_precision in ("fp16", "auto"):
            raise HistosynthError(
                f"--mixed-precision {self.mixed_precision}: R1 and the path-length penalty take gradients "
                "of gradients, which fp16 loss scaling does not cover; use no or bf16"
            )
        if self.compile_model:
            raise HistosynthError(
                "--compile: R1 and the path-length penalty backpropagate through a gradient, "
                "which torch.compile does not support; train StyleGAN2 without it"
            )
        if self.reduced_precision_resolutions < 0:
            raise HistosynthError(
                f"reduced_precision_resolutions {self.reduced_precision_resolutions}: must not be negative"
            )
        if self.conv_clamp is not None and self.conv_clamp <= 0:
            raise HistosynthError(f"conv_clamp {self.conv_clamp}: must be positive (None: no clamp)")
        for name in ("r1_interval", "pl_interval", "pl_batch_shrink", "ada_interval", "ada_speed"):
            if getattr(self, name) < 1:
                raise HistosynthError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least 1")
        if self.monitor_samples < 2:
            raise HistosynthError(f"--monitor-samples {self.monitor_samples}: must be at least 2")
        if self.max_rollbacks < 0:
            raise HistosynthError(f"--max-rollbacks {self.max_rollbacks}: must not be negative")
        if not 0.0 <= self.style_mixing <= 1.0:
            raise HistosynthError(f"--style-mixing {self.style_mixing}: must lie in [0, 1]")
        for name in ("r1_gamma", "pl_weight", "ema_half_life"):
            if getattr(self, name) < 0:
                raise HistosynthError(
                    f"--{name.replace('_', '-')} {getattr(self, name)}: must not be negative"
                )
        for name in ("rollback_lr_factor", "rollback_gamma_factor"):
            if getattr(self, name) <= 0:
                raise HistosynthError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be positive")


STYLEGAN2_PRESETS: dict[str, dict[str, Any]] = {
    # Niehues et al. 2024: z and w 512-d, R1 gamma 0.5, style mixing 0.9, path length 2,
    # Adam(0, 0.99, 1e-8), lr 0.001 for G and D, batch 64, 16 epochs; StyleGAN2 config F's
    # mapping (8 layers) and EMA (10k images); ADA's p-speed (500k images) and target (0.6),
    # and its mixed precision (4 highest resolutions, conv clamp 256; here in bfloat16).
    "paper": dict(
        num_workers=PAPER_WORKERS,
        epochs=16,
        batch_size=64,
        learning_rate=0.001,
        size=PAPER_SIZE,
        checkpoint_every=1000,
        z_dim=512,
        w_dim=512,
        embed_dim=512,
        mapping_layers=8,
        channel_base=16384,
        channel_max=512,
        reduced_precision_resolutions=4,
        conv_clamp=256.0,
        ema_half_life=10_000,
        ada_speed=500_000,
        monitor_samples=16,
        min_diversity=0.2,
        max_gap=10.0,
        monitor_start=2000,
    ),
    "tiny": dict(),
}


def stylegan2_options(preset: str = "tiny", **overrides: Any) -> StyleGAN2Options:
    """StyleGAN2's settings from `preset`, with the non-None `overrides` (`resolve`)."""
    return resolve(StyleGAN2Options, preset, STYLEGAN2_PRESETS, **overrides)
