"""StyleGAN2's two forms of the modulated convolution, its reduced precision and conv clamp."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainer.stylegan2 import networks
from trainer.stylegan2.losses import r1_penalty
from trainer.stylegan2.networks import (
    ModulatedConv2d,
    StyleGAN2Discriminator,
    StyleGAN2Generator,
    SynthesisLayer,
)
from trainer.stylegan2.options import stylegan2_options


def per_image_reference(conv: ModulatedConv2d, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The paper's equations one image at a time: w'_ijk = s_i w_ijk, w'' = w' / |w'_j|, conv."""
    outputs = []
    for image, style in zip(x, conv.affine(w), strict=True):
        weight = conv.weight * conv.weight_gain * style[None, :, None, None]
        if conv.demodulate:
            weight = weight / (weight.square().sum(dim=(1, 2, 3), keepdim=True) + 1e-8).sqrt()
        if conv.up:
            image = F.interpolate(image[None], scale_factor=2, mode="bilinear", align_corners=False)[0]
        outputs.append(F.conv2d(image[None], weight, padding=weight.shape[-1] // 2)[0])
    return torch.stack(outputs)


@pytest.mark.parametrize(
    ("up", "demodulate", "kernel"), [(True, True, 3), (False, True, 3), (False, False, 1)]
)
def test_both_forms_of_the_modulated_convolution_equal_the_per_image_equations(
    up: bool, demodulate: bool, kernel: int
) -> None:
    torch.manual_seed(0)
    conv = ModulatedConv2d(6, 5, kernel, 8, demodulate=demodulate, up=up)
    x, w = torch.randn(3, 6, 8, 8), torch.randn(3, 8)
    expected = per_image_reference(conv, x, w)
    trained = conv.train()(x, w)
    sampled = conv.eval()(x, w)
    torch.testing.assert_close(trained, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sampled, expected, rtol=1e-5, atol=1e-5)
    weight_gradients = []
    for mode in (True, False):
        conv.train(mode).zero_grad()
        conv(x, w).square().sum().backward()
        weight_gradients.append(conv.weight.grad.clone())
    torch.testing.assert_close(*weight_gradients, rtol=1e-4, atol=1e-5)


def test_training_convolves_with_the_shared_weight_and_sampling_groups_per_image_weights(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kernels: list[tuple[int, ...]] = []
    convolve = F.conv2d

    def recording(x: torch.Tensor, weight: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        kernels.append(tuple(weight.shape))
        return convolve(x, weight, *args, **kwargs)

    monkeypatch.setattr(networks.F, "conv2d", recording)
    conv = ModulatedConv2d(6, 5, 3, 8)
    x, w = torch.randn(4, 6, 8, 8), torch.randn(4, 8)
    conv.train()(x, w)
    conv.eval()(x, w)
    # training: one (out, in, 3, 3) weight for the batch; sampling: 4 images' weights, grouped
    assert kernels == [(5, 6, 3, 3), (4 * 5, 6, 3, 3)]


def tiny_networks(**sizes: object) -> tuple[StyleGAN2Generator, StyleGAN2Discriminator]:
    torch.manual_seed(1)
    common = dict(num_classes=2, resolution=32, channel_base=256, channel_max=16, **sizes)
    generator = StyleGAN2Generator(z_dim=8, w_dim=8, embed_dim=8, mapping_layers=2, **common)
    return generator, StyleGAN2Discriminator(**common)


def input_dtypes(network: torch.nn.Module, kinds: tuple[type, ...]) -> list[torch.dtype]:
    """Records the dtype of the first input of every module of `kinds` in `network`, in call order."""
    seen: list[torch.dtype] = []
    for module in network.modules():
        if isinstance(module, kinds):
            module.register_forward_pre_hook(lambda _, args: seen.append(args[0].dtype))
    return seen


def test_the_top_resolutions_train_in_bfloat16_where_the_device_allows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    generator, discriminator = tiny_networks(reduced_precision_resolutions=2, conv_clamp=256.0)
    z, labels = torch.randn(4, 8), torch.tensor([0, 1, 0, 1])
    generator.eval()
    full = generator(z, labels, noise=[torch.zeros(4, *s) for s in generator.noise_shapes()])
    generator.train()
    assert not networks.reduced_precision(torch.device("cpu"))  # a CPU trains in float32 ...
    monkeypatch.setattr(networks, "reduced_precision", lambda device: True)  # ... a bf16 GPU does not
    layer_dtypes = input_dtypes(generator, (SynthesisLayer,))
    mixed = generator(z, labels, noise=[torch.zeros(4, *s) for s in generator.noise_shapes()])
    # layers at 4, 8, 8, 16, 16, 32, 32: the two highest resolutions (16 and 32) in bfloat16
    assert layer_dtypes == [torch.float32] * 3 + [torch.bfloat16] * 4
    assert mixed.dtype == torch.float32
    assert (mixed - full).abs().max() < 0.05 * full.abs().max()

    block_dtypes = input_dtypes(discriminator, (networks.DiscriminatorBlock,))
    real = torch.randn(4, 3, 32, 32)
    logits = discriminator(real, labels)
    assert block_dtypes == [torch.bfloat16, torch.bfloat16, torch.float32]  # blocks at 32, 16, 8
    assert logits.dtype == torch.float32
    r1_penalty(discriminator, torch.nn.Identity(), real, labels).backward()  # grad of a grad, in bf16
    gradients = [p.grad for p in discriminator.parameters() if p.grad is not None]
    assert gradients and all(g.dtype == torch.float32 and g.isfinite().all() for g in gradients)

    discriminator.eval()
    block_dtypes.clear()
    discriminator(real, labels)
    assert block_dtypes == [torch.float32] * 3  # eval mode (the monitor, sampling) stays float32


def test_conv_clamp_bounds_every_layer_output() -> None:
    generator, discriminator = tiny_networks(conv_clamp=2.0)
    with torch.no_grad():
        for parameter in [*generator.parameters(), *discriminator.parameters()]:
            parameter.mul_(8.0)
    outputs: list[torch.Tensor] = []
    for module in [*generator.modules(), *discriminator.modules()]:
        if isinstance(module, (SynthesisLayer, networks.ToRGB, networks.EqualConv2d)):
            module.register_forward_hook(lambda _, __, out: outputs.append(out))
    images = generator(torch.randn(2, 8), torch.tensor([0, 1]))
    discriminator(images, torch.tensor([0, 1]))
    assert outputs and all(out.abs().max() <= 2.0 for out in outputs)
    assert any(out.abs().max() == 2.0 for out in outputs)  # the clamp was reached, not idle


def test_the_paper_preset_uses_stylegan2_ada_mixed_precision_and_tiny_does_not() -> None:
    paper, tiny = stylegan2_options("paper"), stylegan2_options("tiny")
    assert (paper.reduced_precision_resolutions, paper.conv_clamp) == (4, 256.0)
    assert (tiny.reduced_precision_resolutions, tiny.conv_clamp) == (0, None)
    generator, _ = networks.build_networks(paper, num_classes=9)
    assert generator.lowest_reduced == paper.size // 8
