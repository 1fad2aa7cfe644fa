"""The networks' memory layout: channels_last on a GPU, the same numbers in either layout."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import AutoencoderKL

from trainer.core.loop import in_memory_format, memory_format
from trainer.stylegan2.networks import StyleGAN2Discriminator

GPU, CPU = torch.device("cuda"), torch.device("cpu")


def test_a_gpu_run_lays_its_networks_out_channels_last_and_a_cpu_run_does_not() -> None:
    assert memory_format(GPU) is torch.channels_last and memory_format(CPU) is torch.contiguous_format
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(4, 4))
    in_memory_format(CPU, network)
    assert network[0].weight.is_contiguous()
    in_memory_format(GPU, network)  # the layout alone: the weights stay where they are
    assert network[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not network[0].weight.is_contiguous() and network[0].weight.device == CPU


@pytest.mark.parametrize("kind", ["autoencoder", "stylegan2-discriminator"])
def test_channels_last_gives_the_same_loss_and_gradients(kind: str) -> None:
    torch.manual_seed(0)
    if kind == "autoencoder":
        network = AutoencoderKL(
            block_out_channels=(8, 16),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            norm_num_groups=4,
        )
        run = lambda net, x: net(x).sample.square().mean()  # noqa: E731
    else:
        network = StyleGAN2Discriminator(num_classes=2, resolution=16, channel_base=128, channel_max=16)
        run = lambda net, x: net(x, torch.tensor([0, 1])).square().mean()  # noqa: E731
    images = torch.randn(2, 3, 16, 16)
    nhwc = copy.deepcopy(network)
    in_memory_format(GPU, nhwc)
    losses, gradients = [], []
    for net, x in ((network, images), (nhwc, images.to(memory_format=torch.channels_last))):
        loss = run(net, x)
        loss.backward()
        losses.append(loss.detach())
        gradients.append([p.grad.contiguous() for p in net.parameters() if p.grad is not None])
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    for plain, last in zip(*gradients, strict=True):
        torch.testing.assert_close(plain, last, rtol=1e-4, atol=1e-6)
