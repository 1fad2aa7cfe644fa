"""Loading a trained StyleGAN2 and drawing images from it, reproducibly image by image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from histosynth.errors import HistosynthError
from trainer.core.model_folder import read_model_info
from trainer.stylegan2.networks import StyleGAN2Generator

KIND = "stylegan2"
PAD_TO = 8


def load_stylegan2(folder: str | Path, device: torch.device) -> StyleGAN2Generator:
    """The EMA generator of a StyleGAN2 model folder, on `device`, for sampling.

    Raises:
        HistosynthError: no `histosynth.json`, another kind of model, or no `generator/`.
    """
    folder = Path(folder).expanduser()
    read_model_info(folder, [KIND])
    try:
        generator = StyleGAN2Generator.from_pretrained(folder / "generator")
    except OSError as error:
        raise HistosynthError(f"{folder}: incomplete model folder ({error})") from error
    return generator.to(device).eval().requires_grad_(False)


@torch.no_grad()
def generate_images(
    generator: StyleGAN2Generator,
    labels: list[int],
    generators: list[torch.Generator],
    truncation: float = 1.0,
) -> np.ndarray:
    """(B, H, W, 3) uint8 images; image b draws z, then each layer's noise, from `generators[b]` (CPU).

    Batches are padded to a multiple of `PAD_TO` with zero inputs, so on CPU an image's
    arithmetic does not depend on its companions or the batch size.
    """
    device = generator.device
    count = len(generators)
    padding = -count % PAD_TO
    z = [torch.randn(generator.config.z_dim, generator=g) for g in generators]
    noise = [[torch.randn(shape, generator=g) for g in generators] for shape in generator.noise_shapes()]
    z_batch = torch.stack(z + [torch.zeros(generator.config.z_dim)] * padding).to(device)
    noise_batch = [torch.stack(layer + [torch.zeros_like(layer[0])] * padding).to(device) for layer in noise]
    label_batch = torch.tensor(list(labels) + [0] * padding, device=device)
    images = generator(z_batch, label_batch, truncation=truncation, noise=noise_batch)[:count]
    images = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).cpu().numpy()
