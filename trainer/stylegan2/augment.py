"""Adaptive discriminator augmentation (ADA, Karras et al. 2020b) with kornia's transforms.

Every image the discriminator sees, real or generated, passes through the same pipeline, each
transform applied to each image independently with one probability p. Because the transforms are
differentiable, the generator is trained through them and never learns to produce augmented
images (they "do not leak" for p below about 0.8, paper section 2.3). The set is the paper's
"bgc" pipeline: x-flips, 90-degree rotations and translation (blit; kornia's translation is
fractional and bilinear, where the paper's blit moves whole pixels); isotropic scaling,
arbitrary rotation, anisotropic scaling and fractional translation (geometric, reflection
padding); brightness, contrast, luma flip, hue rotation and saturation (colour). The ranges
follow the paper's (kornia draws uniformly where the paper draws log-normal or normal values
with the same spread). Hue and saturation go through kornia's HSV conversion, which clamps to the
displayable range; the other transforms are linear in the pixels and pass gradients everywhere.
kornia has no luma flip, so it is the one transform written here: reflection of the colour
about the grey axis, x - 2 v v^T x with v = (1, 1, 1) / sqrt 3, on images centred at 0.

p is tuned from the overfitting heuristic r_t = E[sign(D(x_real))]: every `interval` steps it
moves by sign(r_t - target) x (images seen) / (images for 0 -> 1), and stays in [0, 1].
"""

from __future__ import annotations

import math

import kornia.augmentation as K
import torch
from torch import nn

from histosynth.errors import HistosynthError


class RandomLumaFlip(nn.Module):
    """Reflect each selected image's colours about the grey axis (ADA's luma flip), probability p."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        chosen = torch.rand(images.shape[0], device=images.device) < self.p
        luma = images.mean(dim=1, keepdim=True)  # (v . x) v with v = (1, 1, 1) / sqrt 3
        flipped = images - 2.0 * luma
        return torch.where(chosen[:, None, None, None], flipped, images)


def ada_pipeline() -> nn.ModuleList:
    """The paper's 12 transforms as kornia modules (and the luma flip), each with its own p."""
    log2 = math.log(2.0)
    scale = math.exp(0.2 * log2 * 2)  # about two standard deviations of lognormal(0, 0.2 ln 2)
    return nn.ModuleList(
        [
            K.RandomHorizontalFlip(),
            K.RandomRotation90(times=(-1.49, 2.49)),  # rounds to -1..2 quarter turns, equally likely
            K.RandomAffine(degrees=0.0, translate=(0.125, 0.125), padding_mode="reflection"),
            K.RandomAffine(degrees=0.0, scale=(1 / scale, scale), padding_mode="reflection"),
            K.RandomAffine(degrees=180.0, padding_mode="reflection"),
            K.RandomAffine(
                degrees=0.0, scale=(1 / scale, scale, 1 / scale, scale), padding_mode="reflection"
            ),
            K.RandomAffine(degrees=0.0, translate=(0.125, 0.125), padding_mode="reflection"),
            K.RandomBrightness(brightness=(0.6, 1.4), clip_output=False),  # adds U(-0.4, 0.4) ~ 2 x 0.2
            K.RandomContrast(contrast=(0.5, 2.0), clip_output=False),  # about lognormal(0, 0.5 ln 2)
            RandomLumaFlip(),
            K.RandomHue(hue=(-0.5, 0.5)),  # rotation by U(-pi, pi), as the paper
            K.RandomSaturation(saturation=(0.5, 2.0)),  # about lognormal(0, ln 2)
        ]
    )


# Transforms that work on [0, 1] images (kornia's HSV colour space); the rest take [-1, 1].
UNIT_RANGE = (K.RandomHue, K.RandomSaturation)


class AdaptiveAugment(nn.Module):
    """The pipeline, its probability p and the r_t accumulator (all in `state_dict`, for resume).

    Args:
        target: r_t the heuristic steers toward (0.6 in the paper).
        interval: steps between adjustments of p (4).
        speed_images: images over which p can move from 0 to 1 (500,000 in the paper).
        p: the starting probability.
        enabled: False keeps p at 0 and passes images through (no ADA).
    """

    def __init__(
        self,
        *,
        target: float = 0.6,
        interval: int = 4,
        speed_images: int = 500_000,
        p: float = 0.0,
        enabled: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise HistosynthError(f"--ada-p {p}: must lie in [0, 1]")
        if interval < 1 or speed_images < 1:
            raise HistosynthError("--ada-interval and --ada-speed must be at least 1")
        self.pipeline = ada_pipeline()
        self.target = target
        self.interval = interval
        self.speed_images = speed_images
        self.enabled = enabled
        self.register_buffer("p", torch.tensor(float(p) if enabled else 0.0, dtype=torch.float64))
        self.register_buffer("sign_sum", torch.zeros((), dtype=torch.float64))
        self.register_buffer("sign_count", torch.zeros((), dtype=torch.float64))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Augment each image with probability p per transform (differentiable)."""
        p = float(self.p)
        if not self.enabled or p == 0.0:
            return images
        for transform in self.pipeline:
            transform.p = p
            if isinstance(transform, UNIT_RANGE):
                images = transform((images + 1.0) / 2.0) * 2.0 - 1.0
            else:
                images = transform(images)
        return images

    @torch.no_grad()
    def accumulate(self, real_logits: torch.Tensor) -> None:
        """Add the signs of the discriminator's logits on (augmented) real images to r_t."""
        self.sign_sum += real_logits.detach().sign().sum().to(self.sign_sum)
        self.sign_count += real_logits.numel()

    @torch.no_grad()
    def adjust(self, images_per_step: int) -> float | None:
        """Update p from r_t gathered over the last `interval` steps; returns r_t (None: no data)."""
        if not self.enabled or float(self.sign_count) == 0.0:
            return None
        r_t = float(self.sign_sum / self.sign_count)
        direction = float(r_t > self.target) - float(r_t < self.target)
        change = direction * images_per_step * self.interval / self.speed_images
        self.p.copy_(torch.clamp(self.p + change, 0.0, 1.0))
        self.sign_sum.zero_()
        self.sign_count.zero_()
        return r_t
