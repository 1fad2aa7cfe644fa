"""StyleGAN2's regularisers and optimizers, and what keeps them well-behaved under DDP.

R1 and the path-length penalty (Karras et al. 2020a) differentiate a gradient (a double
backward); lazy regularisation runs them every few steps as their own Adam steps, whose rate
and betas `lazy_adam` corrects. Two DDP details live here because these double backwards
cause them: `every_parameter_used` (every parameter must get a gradient) and
`keep_gradient_layout` (every gradient must have its parameter's strides).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

from trainer.stylegan2.augment import AdaptiveAugment
from trainer.stylegan2.options import StyleGAN2Options


class PathLengthMean(torch.nn.Module):
    """The running mean a of the path lengths (a buffer, so checkpoints carry it)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("value", torch.zeros(()))


def lazy_adam(parameters: Any, rate: float, interval: int, options: StyleGAN2Options) -> torch.optim.Adam:
    """Adam with lazy regularisation's correction: rate x c and betas ** c, c = interval / (interval + 1)."""
    c = interval / (interval + 1)
    betas = (options.beta1**c, options.beta2**c)
    return torch.optim.Adam(parameters, lr=rate * c, betas=betas, eps=options.adam_eps)


def r1_penalty(
    discriminator: torch.nn.Module, augment: AdaptiveAugment, real: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Mean over images of |grad_x D(A(x), c)|^2 (R1 on the un-augmented reals, through A)."""
    real = real.detach().requires_grad_(True)
    logits = discriminator(augment(real), labels)
    (gradient,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    return gradient.square().sum(dim=(1, 2, 3)).mean() + every_parameter_used(logits)


def path_length_penalty(
    generator: torch.nn.Module, z: torch.Tensor, labels: torch.Tensor, mean: PathLengthMean, decay: float
) -> torch.Tensor:
    """(|J_w^T y| - a)^2 averaged, y ~ N(0, I) / sqrt(H W); moves the running mean a by `decay`."""
    images, ws = generator(z, labels, return_ws=True)
    y = torch.randn_like(images) / math.sqrt(images.shape[2] * images.shape[3])
    (gradient,) = torch.autograd.grad((images * y).sum(), ws, create_graph=True)
    lengths = gradient.square().sum(dim=2).mean(dim=1).sqrt()
    mean.value.copy_(mean.value.lerp(lengths.mean().detach(), decay))
    return (lengths - mean.value).square().mean() + every_parameter_used(images)


def every_parameter_used(output: torch.Tensor) -> torch.Tensor:
    """A zero that ties a penalty's backward to every parameter of the forward that made `output`.

    R1 and the path-length penalty differentiate a gradient, so parameters that only shift the
    output (the last biases) get no gradient from them. DistributedDataParallel waits for a
    gradient of every parameter it saw in the forward and fails the next step ("Expected to
    have finished reduction in the prior iteration"); adding 0 x output makes autograd send a
    zero to each of them, which changes no value.
    """
    return output.flatten()[0] * 0.0


def keep_gradient_layout(module: torch.nn.Module) -> None:
    """Give every parameter's gradient the parameter's own strides, as DDP's buckets expect.

    Autograd may hand a (1, N) weight a gradient with strides (1, 1) instead of (N, 1): R1's
    zero through `every_parameter_used` reaches the discriminator's last layer as the product
    of a transposed column. Both layouts hold the same numbers, but DistributedDataParallel
    compares strides, warns ("Grad strides do not match bucket view strides") and copies on
    every step. A hook copies such a gradient into the parameter's layout before it is
    accumulated; gradients already in it pass untouched.
    """
    for parameter in module.parameters():
        parameter.register_hook(functools.partial(_in_layout, parameter.stride()))


def _in_layout(strides: tuple[int, ...], gradient: torch.Tensor) -> torch.Tensor:
    if gradient.stride() == strides:
        return gradient
    copy = torch.empty_strided(gradient.shape, strides, dtype=gradient.dtype, device=gradient.device)
    return copy.copy_(gradient)


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, beta: float) -> None:
    """ema = beta ema + (1 - beta) model for parameters; buffers (the w means) are copied."""
    for target, source in zip(ema.parameters(), model.parameters(), strict=True):
        target.lerp_(source.detach(), 1.0 - beta)
    for target, source in zip(ema.buffers(), model.buffers(), strict=True):
        target.copy_(source)
