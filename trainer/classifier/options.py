"""The downstream classifier's settings and presets (the paper's Table 3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from histosynth.errors import HistosynthError
from trainer.core.options import TrainOptions, resolve


@dataclass(frozen=True)
class ClassifierOptions(TrainOptions):
    """The downstream tissue classifier (the paper's Table 3): fastai `vision_learner`, ResNet34.

    Attributes:
        arch: the body: a torchvision ResNet (`resnet34`, the paper's), which can start from
            ImageNet weights, or `xresnet18_narrow`, which trains from scratch (the tiny preset's).
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

    def check(self) -> None:
        super().check()
        if not 0.0 < self.valid_fraction < 1.0:
            raise HistosynthError(f"--valid-fraction {self.valid_fraction}: must lie in (0, 1)")


CLASSIFIER_PRESETS: dict[str, dict[str, Any]] = {
    # The paper's classifier: 15 epochs, batch 64, Adam at 1e-3 with fastai's one-cycle schedule,
    # taken as given (no CompVis scaling); 224 px, the native size of NCT-CRC-HE-100K tiles.
    "paper": dict(epochs=15, batch_size=64, learning_rate=1e-3, scale_lr=False, size=224),
    # CPU runs: a narrow XResNet18 from scratch (0.9M weights, a fifth of ResNet18's time a step),
    # 32 px, 1 epoch.
    "tiny": dict(
        arch="xresnet18_narrow", epochs=1, batch_size=8, learning_rate=1e-3, scale_lr=False, size=32
    ),
}


def classifier_options(preset: str = "tiny", **overrides: Any) -> ClassifierOptions:
    """The classifier's settings from `preset`, with the non-None `overrides` (`resolve`)."""
    return resolve(ClassifierOptions, preset, CLASSIFIER_PRESETS, **overrides)
