"""StyleGAN2's parts on their own: network shapes and conditioning, modulated convolution against
a per-image reference, R1 and path length against finite differences, ADA's p, the collapse monitor."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from trainer.core.data import read_training_pool
from trainer.stylegan2.augment import AdaptiveAugment, ColourParameters, colour_matrix, recolour
from trainer.stylegan2.losses import PathLengthMean, keep_gradient_layout, path_length_penalty, r1_penalty
from trainer.stylegan2.monitor import CollapseMonitor
from trainer.stylegan2.networks import (
    ModulatedConv2d,
    StyleGAN2Discriminator,
    StyleGAN2Generator,
    build_networks,
)
from trainer.stylegan2.options import stylegan2_options


def tiny_networks(num_classes: int = 2) -> tuple[StyleGAN2Generator, StyleGAN2Discriminator]:
    torch.manual_seed(0)
    return build_networks(stylegan2_options("tiny"), num_classes)


def no_noise(generator: StyleGAN2Generator, batch: int) -> list[torch.Tensor]:
    return [torch.zeros((batch, *shape)) for shape in generator.noise_shapes()]


def test_shapes_and_a_folder_that_rebuilds_itself(tmp_path: Path) -> None:
    generator, discriminator = tiny_networks(3)
    z = torch.randn(5, generator.config.z_dim)
    labels = torch.tensor([0, 1, 2, 0, 1])
    images, ws = generator(z, labels, return_ws=True)
    assert images.shape == (5, 3, 32, 32) and ws.shape == (5, generator.num_ws, 32)
    assert generator.num_ws == 2 * 5 - 2  # 4, 8, 16, 32 px: 2 log2(32) - 2 styles
    assert [shape[-1] for shape in generator.noise_shapes()] == [4, 8, 8, 16, 16, 32, 32]
    assert discriminator(images, labels).shape == (5,)

    generator.save_pretrained(tmp_path / "generator")
    discriminator.save_pretrained(tmp_path / "discriminator")
    loaded = StyleGAN2Generator.from_pretrained(tmp_path / "generator")
    critic = StyleGAN2Discriminator.from_pretrained(tmp_path / "discriminator")
    noise = no_noise(generator, 5)
    assert torch.equal(loaded(z, labels, noise=noise), generator.eval()(z, labels, noise=noise))
    assert torch.equal(critic(images, labels), discriminator(images, labels))
    assert loaded.config.num_classes == 3 and critic.config.resolution == 32


def test_paper_preset_builds_the_papers_networks() -> None:
    options = stylegan2_options("paper")
    assert (options.z_dim, options.w_dim, options.size, options.batch_size) == (512, 512, 256, 64)
    assert (options.r1_gamma, options.pl_weight, options.style_mixing, options.learning_rate) == (
        0.5,
        2.0,
        0.9,
        0.001,
    )
    assert (options.beta1, options.beta2, options.adam_eps, options.epochs) == (0.0, 0.99, 1e-8, 16)
    generator = StyleGAN2Generator(num_classes=9, resolution=256)
    assert generator.num_ws == 14 and generator.const.shape == (512, 4, 4)


def test_different_classes_from_the_same_z_give_different_images() -> None:
    generator, _ = tiny_networks(2)
    z = torch.randn(1, generator.config.z_dim).repeat(2, 1)
    noise = no_noise(generator, 2)
    images = generator(z, torch.tensor([0, 1]), noise=noise)
    assert (images[0] - images[1]).abs().mean() > 1e-3
    same = generator(z, torch.tensor([1, 1]), noise=noise)
    assert torch.allclose(same[0], same[1])


def test_truncation_pulls_w_to_the_class_mean() -> None:
    generator, _ = tiny_networks(2)
    generator.w_avg.copy_(torch.randn_like(generator.w_avg))
    z = torch.randn(4, generator.config.z_dim)
    labels = torch.tensor([0, 1, 0, 1])
    assert torch.allclose(generator.map(z, labels, truncation=0.0), generator.w_avg[labels])
    w, half = generator.map(z, labels), generator.map(z, labels, truncation=0.5)
    assert torch.allclose(half, generator.w_avg[labels] + 0.5 * (w - generator.w_avg[labels]), atol=1e-6)


def test_modulated_convolution_matches_a_per_image_reference() -> None:
    torch.manual_seed(1)
    layer = ModulatedConv2d(4, 6, 3, w_dim=8)
    x, w = torch.randn(3, 4, 9, 9), torch.randn(3, 8)
    styles = layer.affine(w)
    expected = []
    for index in range(3):  # modulate the input, convolve, divide by the modulated weights' norm
        weight = layer.weight * layer.weight_gain
        out = F.conv2d(x[index : index + 1] * styles[index, None, :, None, None], weight, padding=1)
        norm = (weight * styles[index, None, :, None, None]).square().sum(dim=(1, 2, 3)).sqrt()
        expected.append(out / norm[None, :, None, None])
    assert torch.allclose(layer(x, w), torch.cat(expected), atol=1e-5)
    # demodulation: unit-variance inputs give outputs of about unit variance (paper, eq. 3)
    with torch.no_grad():
        assert 0.7 < float(layer(torch.randn(64, 4, 16, 16), torch.randn(64, 8)).std()) < 1.3


def test_r1_matches_finite_differences_and_reaches_the_discriminator() -> None:
    _, discriminator = tiny_networks(2)
    discriminator = discriminator.double()
    off = AdaptiveAugment(enabled=False)
    real = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    labels = torch.tensor([0, 1])
    penalty = r1_penalty(discriminator, off, real, labels)
    penalty.backward()
    missing = [name for name, p in discriminator.named_parameters() if p.grad is None]
    assert missing == []  # every parameter gets a gradient, as DistributedDataParallel needs
    assert float(discriminator.out.bias.grad.abs().sum()) == 0  # the one that cannot change grad_x D
    assert float(discriminator.from_rgb.weight.grad.abs().sum()) > 0
    assert float(discriminator.embed.weight.grad.abs().sum()) > 0
    # |grad_x D|^2 by central differences on a few pixels of image 0 (D is per image but for mbstd)
    real.requires_grad_(True)
    (gradient,) = torch.autograd.grad(discriminator(real, labels).sum(), real)
    for position in [(0, 0, 3, 4), (0, 2, 17, 30), (1, 1, 31, 0)]:
        step = torch.zeros_like(real)
        step[position] = 1e-5
        with torch.no_grad():
            plus, minus = discriminator(real + step, labels).sum(), discriminator(real - step, labels).sum()
        assert float((plus - minus) / 2e-5) == pytest.approx(float(gradient[position]), rel=1e-4, abs=1e-8)
    assert float(penalty.detach()) == pytest.approx(
        float(gradient.square().sum(dim=(1, 2, 3)).mean()), rel=1e-9
    )


def test_every_gradient_of_the_penalties_has_its_parameters_layout() -> None:
    """DDP compares each gradient's strides with its bucket's (the parameter's) and warns otherwise."""
    generator, discriminator = tiny_networks()
    off = AdaptiveAugment(enabled=False)
    real, labels = torch.rand(4, 3, 32, 32) * 2 - 1, torch.tensor([0, 1, 0, 1])

    def mismatched() -> list[str]:
        discriminator.zero_grad(set_to_none=True)
        r1_penalty(discriminator, off, real, labels).backward()
        generator.zero_grad(set_to_none=True)
        path_length_penalty(generator, torch.randn(2, 32), labels[:2], PathLengthMean(), 0.01).backward()
        return [
            name
            for network in (generator, discriminator)
            for name, parameter in network.named_parameters()
            if parameter.grad is not None and parameter.grad.stride() != parameter.stride()
        ]

    assert mismatched() == ["out.weight"]  # the (1, 32) last layer, as autograd hands it over
    for network in (generator, discriminator):
        keep_gradient_layout(network)
    before = {name: p.grad.clone() for name, p in discriminator.named_parameters() if p.grad is not None}
    assert mismatched() == []
    after = {name: p.grad for name, p in discriminator.named_parameters() if p.grad is not None}
    assert all(torch.equal(before[name], after[name]) for name in before)  # the same numbers


def test_path_length_penalty_has_gradients_and_tracks_its_mean() -> None:
    generator, _ = tiny_networks(2)
    mean = PathLengthMean()
    z = torch.randn(2, generator.config.z_dim)
    penalty = path_length_penalty(generator, z, torch.tensor([0, 1]), mean, decay=0.01)
    penalty.backward()
    grads = [p.grad for p in generator.mapping.parameters()] + [generator.const.grad]
    assert all(g is not None and float(g.abs().sum()) > 0 for g in grads)
    assert float(mean.value) > 0  # moved from 0 by 1% of the mean length
    assert float(penalty.detach()) > 0


def test_luma_flip_reflects_luma_and_keeps_chroma() -> None:
    images = torch.randn(4, 3, 5, 5)
    zeros, ones = torch.zeros(4), torch.ones(4)
    flip = colour_matrix(ColourParameters(zeros, ones, ones, zeros, ones))  # the luma flip alone
    flipped = recolour(images, flip)
    assert torch.allclose(flipped.mean(dim=1), -images.mean(dim=1), atol=1e-6)
    chroma = images - images.mean(dim=1, keepdim=True)
    assert torch.allclose(flipped - flipped.mean(dim=1, keepdim=True), chroma, atol=1e-6)
    assert torch.allclose(recolour(flipped, flip), images, atol=1e-6)


def test_augmentation_is_identity_at_p0_and_differentiable_at_p1() -> None:
    images = torch.randn(4, 3, 32, 32, requires_grad=True)
    assert AdaptiveAugment(p=0.0)(images) is images
    torch.manual_seed(0)
    augmented = AdaptiveAugment(p=1.0)(images)
    assert augmented.shape == images.shape and not torch.allclose(augmented, images)
    augmented.square().mean().backward()
    assert float(images.grad.abs().sum()) > 0


def test_ada_p_follows_the_sign_of_r_t_minus_target() -> None:
    augment = AdaptiveAugment(interval=4, speed_images=1000)
    assert augment.adjust(8) is None and float(augment.p) == 0.0  # no logits yet
    augment.accumulate(torch.tensor([1.0, 2.0, -1.0, 3.0]))  # r_t = 0.5 < 0.6
    assert augment.adjust(8) == pytest.approx(0.5) and float(augment.p) == 0.0  # clamped at 0
    augment.accumulate(torch.ones(10))  # r_t = 1
    augment.adjust(8)
    assert float(augment.p) == pytest.approx(8 * 4 / 1000)
    state = augment.state_dict()
    again = AdaptiveAugment(interval=4, speed_images=1000)
    again.load_state_dict(state)
    assert float(again.p) == float(augment.p)


def test_augmentation_probability_moves_up_when_d_overfits_a_tiny_set() -> None:
    """A discriminator trained against noise on four real tiles learns to call them real: r_t -> 1."""
    _, discriminator = tiny_networks(2)
    augment = AdaptiveAugment(interval=2, speed_images=40)
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=0.002, betas=(0.0, 0.99))
    torch.manual_seed(0)
    real = torch.rand(4, 3, 32, 32) * 2 - 1
    labels = torch.tensor([0, 0, 1, 1])
    history, rates = [], []
    for step in range(12):
        real_logits = discriminator(augment(real), labels)
        fake_logits = discriminator(augment(torch.randn(4, 3, 32, 32) * 0.1), labels)
        loss = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        augment.accumulate(real_logits)
        if (step + 1) % augment.interval == 0:
            rates.append(augment.adjust(4))
            history.append(float(augment.p))
    assert rates[0] < 0.6 and history[0] == 0.0  # untrained: D does not tell real from fake yet
    assert max(rates) > 0.6 and history[-1] > 0.0  # it overfits the four tiles, so p rises


def test_the_monitor_flags_a_generator_that_ignores_z(make_tiles) -> None:
    pool = read_training_pool(make_tiles(per_class=4))
    generator, _ = tiny_networks(2)
    monitor = CollapseMonitor(pool, 32, 32, samples=4, seed=0, min_diversity=0.05, max_gap=5.0)
    healthy = monitor.check(generator, step=10, device=torch.device("cpu"))
    assert not healthy.collapsed and min(healthy.diversity.values()) > 0.05 and healthy.gap is None

    with torch.no_grad():
        generator.mapping[0].weight[:, : generator.config.z_dim] = 0  # w now depends on the class only
    monitor.record_logits(torch.full((4,), 4.0), torch.full((4,), -3.0))
    collapsed = monitor.check(generator, step=20, device=torch.device("cpu"))
    assert collapsed.collapsed and collapsed.diversity == {"ADI": 0.0, "TUM": 0.0}
    assert collapsed.gap == pytest.approx(7.0)
    assert collapsed.reasons == [
        "ADI diversity 0.000 < 0.05",
        "TUM diversity 0.000 < 0.05",
        "discriminator gap 7.00 > 5.0",
    ]

    patient = CollapseMonitor(pool, 32, 32, samples=4, seed=0, min_diversity=0.05, max_gap=5.0, start=100)
    early = patient.check(generator, step=20, device=torch.device("cpu"))
    assert early.reasons and not early.collapsed  # recorded, but a fresh run is not judged yet
