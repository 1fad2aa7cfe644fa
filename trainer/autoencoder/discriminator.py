"""The PatchGAN discriminator of the CompVis autoencoders, with its hinge loss and adaptive weight.

CompVis `LPIPSWithDiscriminator` (taming-transformers) uses the pix2pix `NLayerDiscriminator`:
strided 4x4 convolutions with BatchNorm and LeakyReLU(0.2), one logit per patch, weights drawn
from N(0, 0.02). Its generator term is weighted adaptively by the ratio of gradient norms of the
reconstruction and adversarial losses at the decoder's last layer (Esser et al. 2021, eq. 7).
"""

from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    """Logits per overlapping patch for (B, 3, H, W) images in [-1, 1].

    Args:
        in_channels: image channels.
        channels: first layer's channels (64 in CompVis).
        layers: strided layers (3 for kl-f8, 2 for vq-f8); channels double per layer up to 8x.
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        width = channels
        for index in range(1, layers + 1):
            stride = 2 if index < layers else 1
            out = channels * min(2**index, 8)
            blocks += [
                nn.Conv2d(width, out, 4, stride, 1, bias=False),
                nn.BatchNorm2d(out),
                nn.LeakyReLU(0.2, True),
            ]
            width = out
        blocks.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.main = nn.Sequential(*blocks)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.main(images)


def hinge_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss, 0.5 (E[relu(1 - D(x))] + E[relu(1 + D(G(z)))])."""
    return 0.5 * (torch.relu(1.0 - logits_real).mean() + torch.relu(1.0 + logits_fake).mean())


def adaptive_weight(
    reconstruction_loss: torch.Tensor, generator_loss: torch.Tensor, last_layer: torch.Tensor, scale: float
) -> torch.Tensor:
    """`scale` x |grad rec| / (|grad gen| + 1e-4) at `last_layer`, clamped to [0, 1e4], detached.

    It balances the two terms so that the adversarial gradient reaching the decoder is as large
    as the reconstruction gradient, whatever their raw scales.
    """
    rec_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    gen_grad = torch.autograd.grad(generator_loss, last_layer, retain_graph=True)[0]
    weight = torch.norm(rec_grad) / (torch.norm(gen_grad) + 1e-4)
    return torch.clamp(weight, 0.0, 1e4).detach() * scale
