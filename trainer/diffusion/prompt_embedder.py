"""Fixed text-encoder outputs as a label -> context module, so a fine-tuned SD samples like an LDM.

`trainer.diffusion.sd_finetune` fills it once from the frozen CLIP text encoder (one row per class prompt,
the empty prompt last) and saves it beside the U-Net; `trainer.diffusion.ldm.load_ldm` loads it in place
of the LDM's learned `ClassEmbedder`, so sampling needs neither transformers nor the encoder.
"""

from __future__ import annotations

import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config


class PromptEmbedder(ModelMixin, ConfigMixin):
    """The frozen text encoder's output for each class prompt and, last, for the empty prompt.

    `forward(labels)` returns the (B, tokens, dim) context the U-Net cross-attends to; label
    `null_class` (the number of classes) is the empty prompt.
    """

    @register_to_config
    def __init__(self, num_classes: int, tokens: int, dim: int, prompts: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.register_buffer("embeddings", torch.zeros(num_classes + 1, tokens, dim))

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embeddings[labels]
