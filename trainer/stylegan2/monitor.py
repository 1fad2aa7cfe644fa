"""The mode-collapse monitor: diversity of a fixed set of samples per class, and the D gap.

Mode collapse shows as generated images of one class that stop differing from one another
while the discriminator wins outright. Both are measured at every checkpoint:

- diversity ratio per class: the mean pairwise distance between the features of a fixed set of
  generated images of that class (fixed z, no noise inputs, so only z can make them differ),
  divided by the same statistic over a fixed sample of the class's real tiles. Features are the
  images averaged down to 16 x 16 (no pretrained network is needed, and colour and layout, what
  collapse removes first, survive). A generator that ignores z scores 0; one as varied as the data
  about 1.
- the discriminator gap: the mean logit on real images minus the mean logit on generated ones
  over the steps since the last check (the logits the D step computed anyway).

A check fails when a class's ratio falls below `min_diversity` or the gap exceeds `max_gap`;
before `start` steps it only records (a fresh generator has not found any diversity yet).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from histosynth.images import load_rgb
from histosynth.sampling import derive_seed, sample_files
from trainer.core.data import TrainingPool, to_model_input

FEATURE_SIZE = 16


@dataclass
class MonitorCheck:
    """One check: the step, each class's diversity ratio, the D gap, and the verdict."""

    step: int
    diversity: dict[str, float]
    gap: float | None
    collapsed: bool
    reasons: list[str] = field(default_factory=list)

    def to_record(self) -> dict[str, object]:
        return asdict(self)


def features(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) images -> (B, 3 x 16 x 16) features: the images averaged down to 16 x 16."""
    size = min(FEATURE_SIZE, images.shape[-1])
    return F.adaptive_avg_pool2d(images.float(), size).flatten(1)


def mean_pairwise_distance(feature_rows: torch.Tensor) -> float:
    """The mean Euclidean distance over all pairs of rows, per feature dimension (RMS scale)."""
    if feature_rows.shape[0] < 2:
        return 0.0
    return float(torch.pdist(feature_rows.double()).mean() / np.sqrt(feature_rows.shape[1]))


class CollapseMonitor:
    """Fixed latents and real references per class; `check` judges a generator against them.

    Args:
        pool: the training pool (the real references come from it).
        size: the training resolution.
        z_dim: the generator's latent size.
        samples: generated and real images per class (at least 2).
        seed: the run's seed (fixes the latents and the real sample).
        min_diversity: the lowest acceptable diversity ratio.
        max_gap: the largest acceptable discriminator gap (logits).
        start: checks before this step never fail.
    """

    def __init__(
        self,
        pool: TrainingPool,
        size: int,
        z_dim: int,
        *,
        samples: int,
        seed: int,
        min_diversity: float,
        max_gap: float,
        start: int = 0,
    ) -> None:
        self.classes = list(pool.classes)
        self.min_diversity = min_diversity
        self.max_gap = max_gap
        self.start = start
        self.latents = []
        self.real_diversity = []
        for label, name in enumerate(self.classes):
            generator = torch.Generator().manual_seed(derive_seed(seed, "stylegan2-monitor", name))
            self.latents.append(torch.randn(samples, z_dim, generator=generator))
            files = [path for path, item in zip(pool.files, pool.labels, strict=True) if item == label]
            chosen = sample_files(files, samples, seed, "stylegan2-monitor", name)
            real = torch.stack([to_model_input(load_rgb(path, size=size)) for path in chosen])
            self.real_diversity.append(mean_pairwise_distance(features(real)))
        self.reset_gap()

    def reset_gap(self) -> None:
        self._real_sum: torch.Tensor | float = 0.0
        self._fake_sum: torch.Tensor | float = 0.0
        self._count = 0

    def record_logits(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> None:
        """Add one D step's logits to the gap since the last check, on their device: read back
        at the check only, so that a step waits for no transfer to the host."""
        self._real_sum = self._real_sum + real_logits.detach().float().sum()
        self._fake_sum = self._fake_sum + fake_logits.detach().float().sum()
        self._count += real_logits.numel()

    @torch.no_grad()
    def fake_diversity(self, generator: torch.nn.Module, device: torch.device) -> list[float]:
        """The diversity statistic of each class's fixed samples (no noise inputs)."""
        values = []
        for label, latents in enumerate(self.latents):
            z = latents.to(device)
            labels = torch.full((z.shape[0],), label, device=device, dtype=torch.long)
            noise = [torch.zeros((z.shape[0], *shape), device=device) for shape in generator.noise_shapes()]
            values.append(mean_pairwise_distance(features(generator(z, labels, noise=noise))))
        return values

    def check(self, generator: torch.nn.Module, step: int, device: torch.device) -> MonitorCheck:
        """Judge `generator` (the unwrapped training generator) at `step`; resets the gap."""
        was_training = generator.training
        generator.eval()
        fake = self.fake_diversity(generator, device)
        generator.train(was_training)
        diversity = {
            name: value / real if real > 0 else float("inf")
            for name, value, real in zip(self.classes, fake, self.real_diversity, strict=True)
        }
        gap = float(self._real_sum - self._fake_sum) / self._count if self._count else None
        self.reset_gap()
        reasons = [
            f"{name} diversity {ratio:.3f} < {self.min_diversity}"
            for name, ratio in diversity.items()
            if ratio < self.min_diversity
        ]
        if gap is not None and gap > self.max_gap:
            reasons.append(f"discriminator gap {gap:.2f} > {self.max_gap}")
        collapsed = bool(reasons) and step >= self.start
        return MonitorCheck(step=step, diversity=diversity, gap=gap, collapsed=collapsed, reasons=reasons)


def summary(check: MonitorCheck) -> str:
    """One line for the log: the lowest diversity ratio, the gap and the verdict."""
    lowest = min(check.diversity, key=check.diversity.get)
    gap = "n/a" if check.gap is None else f"{check.gap:.2f}"
    verdict = "COLLAPSE: " + "; ".join(check.reasons) if check.collapsed else "ok"
    return (
        f"step {check.step}: lowest diversity {lowest} {check.diversity[lowest]:.3f}, D gap {gap}: {verdict}"
    )
