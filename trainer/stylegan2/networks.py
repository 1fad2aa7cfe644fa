"""The class-conditional StyleGAN2 networks (Karras et al. 2020a), written from the paper.

Generator: a mapping network turns z (normalised) joined to a learned class embedding
(normalised) into w through fully connected layers at a 100x lower learning rate; the synthesis
network starts from a learned 4 x 4 constant and doubles the resolution per block with
modulated, demodulated 3 x 3 convolutions (the style scales the weights' input channels, the
result is renormalised per output channel), a per-pixel noise input with a learned strength per
layer, and skip RGB outputs summed across resolutions. The mapping keeps a running mean of w
per class, the centre of the truncation trick.

Discriminator: residual blocks from the full resolution down to 4 x 4, the minibatch standard
deviation as an extra feature map, then conditioning by projection (Miyato & Koyama 2018): the
logit is a linear function of the final features plus their dot product with a learned class
embedding.

Every weight is stored N(0, 1) and scaled at run time by He's constant (the equalised learning
rate of StyleGAN). Up- and down-sampling are bilinear: x2 bilinear interpolation is the
[1, 3, 3, 1] / 4 filter that StyleGAN2 applies around its strided convolutions; down-sampling is
a 2 x 2 average (a [1, 1] filter), a simplification of the paper's [1, 3, 3, 1] blur.
In training, the highest resolutions can run in bfloat16 on a GPU (StyleGAN2-ADA's mixed
precision, there fp16, for its 4 highest; `reduced_precision`) with every layer's output clamped
(`conv_clamp`, 256 there); the rest, the style computations and the RGB sum stay float32.
Both networks are diffusers `ModelMixin` + `ConfigMixin` classes, so `save_pretrained` writes
their configuration beside the weights and `from_pretrained` rebuilds them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn

from trainer.stylegan2.options import StyleGAN2Options

SQRT2 = math.sqrt(2.0)


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale each row to unit root mean square (StyleGAN's input normalisation of z)."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
    """Feature maps at a resolution: channel_base / resolution, at most channel_max."""
    return min(channel_base // resolution, channel_max)


def clamped(x: torch.Tensor, clamp: float | None) -> torch.Tensor:
    """`x` limited to +-clamp (StyleGAN2-ADA's conv clamp: it keeps the reduced-precision layers'
    activations, and their gradients, in range); None leaves it as it is."""
    return x if clamp is None else x.clamp(-clamp, clamp)


def reduced_precision(device: torch.device) -> bool:
    """Whether the top resolutions of a network in training may run in bfloat16 on `device`: on a
    GPU that has it (the large early and late layers do most of the work; fp16 would need loss
    scaling, which R1 and the path-length penalty, gradients of gradients, do not get). On a CPU
    bfloat16 convolutions are slower than float32 ones, so they stay float32."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def lowest_reduced_resolution(resolution: int, count: int) -> float:
    """The lowest of the `count` highest resolutions up to `resolution` (inf: none)."""
    return resolution >> (count - 1) if count > 0 else math.inf


def precision_at(network: ModelMixin, resolution: int, lowest_reduced: float, x: torch.Tensor) -> torch.dtype:
    """The dtype of a layer at `resolution`: bfloat16 from `lowest_reduced` up while `network`
    trains on a device with `reduced_precision`, the network's own otherwise (eval mode: samples,
    the EMA generator, pools, stay in full precision, so a pool does not depend on the device)."""
    if network.training and resolution >= lowest_reduced and reduced_precision(x.device):
        return torch.bfloat16
    return network.dtype


class EqualLinear(nn.Module):
    """A fully connected layer with the equalised learning rate, optionally leaky-ReLU'd (x sqrt 2)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias_init: float = 0.0,
        lr_multiplier: float = 1.0,
        activation: bool = False,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_multiplier))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.lr_multiplier = lr_multiplier
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.lr_multiplier)
        return F.leaky_relu(x, 0.2) * SQRT2 if self.activation else x


class EqualConv2d(nn.Module):
    """A convolution with the equalised learning rate; `down` averages 2 x 2 first; optional leaky ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        *,
        bias: bool = True,
        down: bool = False,
        activation: bool = True,
        clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel * kernel)
        self.down = down
        self.activation = activation
        self.clamp = clamp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """In the input's precision (bfloat16 at the top resolutions, `reduced_precision`)."""
        if self.down:
            x = F.avg_pool2d(x, 2)
        weight = (self.weight * self.weight_gain).to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        x = F.conv2d(x, weight, bias, padding=self.weight.shape[-1] // 2)
        x = F.leaky_relu(x, 0.2) * SQRT2 if self.activation else x
        return clamped(x, self.clamp)


class ModulatedConv2d(nn.Module):
    """StyleGAN2's weight modulation and demodulation.

    The affine map of w gives a scale per input channel (initialised to 1); the weights are
    multiplied by it and, with `demodulate`, divided by their L2 norm per output channel, which
    replaces AdaIN's instance normalisation without its droplet artefacts (paper, section 2.2).
    The two are computed in one of two equal ways, by the module's mode: `_scaled_activations`
    in training, `_grouped` in eval mode (the EMA generator, sampling).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        w_dim: int,
        *,
        demodulate: bool = True,
        up: bool = False,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel * kernel)
        self.demodulate = demodulate
        self.up = up

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w)
        if self.up:  # per-channel scaling commutes with the (per-channel) interpolation
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        if self.training:
            return self._scaled_activations(x, styles)
        return self._grouped(x, styles)

    def _scaled_activations(self, x: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
        """Training: the styles scale the input activations and the demodulation the outputs,
        around one convolution with the shared weight. The grouped form would build a weight per
        image (B x out x in x 3 x 3: about 600 MB per 512-channel layer at batch 64, kept for the
        backward pass); this one holds only activations."""
        weight = self.weight * self.weight_gain
        x = F.conv2d(
            x * styles[:, :, None, None].to(x.dtype), weight.to(x.dtype), padding=weight.shape[-1] // 2
        )
        if self.demodulate:  # |w_o * s|^2 summed over inputs and taps: (s^2) @ (|w|^2 summed over taps)^T
            energy = styles.square() @ weight.square().sum(dim=(2, 3)).T
            x = x * (energy + 1e-8).rsqrt()[:, :, None, None].to(x.dtype)
        return x

    def _grouped(self, x: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
        """Outside training: each image's modulated (and demodulated) weight, all images in one
        grouped convolution (fewer, larger kernels; nothing is kept for a backward pass)."""
        batch, in_channels, height, width = x.shape
        weight = self.weight[None] * self.weight_gain * styles[:, None, :, None, None]
        if self.demodulate:
            weight = weight * (weight.square().sum(dim=(2, 3, 4), keepdim=True) + 1e-8).rsqrt()
        out_channels, kernel = weight.shape[1], weight.shape[-1]
        x = F.conv2d(
            x.reshape(1, batch * in_channels, height, width),
            weight.reshape(batch * out_channels, in_channels, kernel, kernel).to(x.dtype),
            padding=kernel // 2,
            groups=batch,
        )
        return x.reshape(batch, out_channels, height, width)


class SynthesisLayer(nn.Module):
    """Modulated 3 x 3 convolution, noise input (learned strength, starts at 0), bias, leaky ReLU,
    all in the input's precision; the result clamped to +-`clamp` when given."""

    def __init__(
        self, in_channels: int, out_channels: int, w_dim: int, *, up: bool = False, clamp: float | None = None
    ) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, w_dim, up=up)
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.clamp = clamp

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        x = self.conv(x, w)
        if noise is None:
            noise = torch.randn((x.shape[0], 1, *x.shape[-2:]), device=x.device, dtype=x.dtype)
        x = x + noise.to(x.dtype) * self.noise_strength.to(x.dtype)
        x = F.leaky_relu(x + self.bias.to(x.dtype)[None, :, None, None], 0.2) * SQRT2
        return clamped(x, self.clamp)


class ToRGB(nn.Module):
    """A modulated 1 x 1 convolution to RGB without demodulation (the skip output of a block)."""

    def __init__(self, in_channels: int, w_dim: int, *, clamp: float | None = None) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, 3, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(3))
        self.clamp = clamp

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The block's RGB in the weights' precision (the sum over resolutions stays in full)."""
        rgb = clamped(self.conv(x, w) + self.bias.to(x.dtype)[None, :, None, None], self.clamp)
        return rgb.to(self.bias.dtype)


class StyleGAN2Generator(ModelMixin, ConfigMixin):
    """z (B, z_dim) and class labels (B,) -> images (B, 3, resolution, resolution), about [-1, 1].

    Args:
        num_classes: classes the generator is conditioned on (label i is class i).
        resolution: output size, a power of two >= 8 (256 in the paper).
        z_dim: latent size (512).
        w_dim: intermediate latent size (512).
        embed_dim: class embedding joined to z (512).
        mapping_layers: fully connected layers of the mapping network (8).
        channel_base: feature maps are channel_base / resolution ...
        channel_max: ... at most this many (512).
        mapping_lr_multiplier: the mapping network's learning-rate factor (0.01).
        reduced_precision_resolutions: the highest resolutions whose layers train in bfloat16
            (4 in StyleGAN2-ADA; where `reduced_precision` allows).
        conv_clamp: every layer's output limited to +- this (256 with reduced precision; None).
    """

    @register_to_config
    def __init__(
        self,
        num_classes: int,
        resolution: int = 256,
        z_dim: int = 512,
        w_dim: int = 512,
        embed_dim: int = 512,
        mapping_layers: int = 8,
        channel_base: int = 16384,
        channel_max: int = 512,
        mapping_lr_multiplier: float = 0.01,
        reduced_precision_resolutions: int = 0,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_classes, embed_dim)
        nn.init.normal_(self.embed.weight)
        widths = [z_dim + embed_dim] + [w_dim] * mapping_layers
        self.mapping = nn.Sequential(
            *[
                EqualLinear(a, b, lr_multiplier=mapping_lr_multiplier, activation=True)
                for a, b in zip(widths[:-1], widths[1:], strict=True)
            ]
        )
        self.register_buffer("w_avg", torch.zeros(num_classes, w_dim))
        levels = int(math.log2(resolution))
        self.resolutions = [2**level for level in range(2, levels + 1)]
        width = [channels_at(res, channel_base, channel_max) for res in self.resolutions]
        self.lowest_reduced = lowest_reduced_resolution(resolution, reduced_precision_resolutions)
        self.const = nn.Parameter(torch.randn(width[0], 4, 4))
        self.layers = nn.ModuleList([SynthesisLayer(width[0], width[0], w_dim, clamp=conv_clamp)])
        self.to_rgb = nn.ModuleList([ToRGB(width[0], w_dim, clamp=conv_clamp)])
        for previous, current in zip(width[:-1], width[1:], strict=True):
            self.layers.append(SynthesisLayer(previous, current, w_dim, up=True, clamp=conv_clamp))
            self.layers.append(SynthesisLayer(current, current, w_dim, clamp=conv_clamp))
            self.to_rgb.append(ToRGB(current, w_dim, clamp=conv_clamp))
        self.num_ws = 2 * levels - 2

    def map(self, z: torch.Tensor, labels: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        """w (B, w_dim); `truncation` < 1 pulls w toward its class's running mean (psi)."""
        w = self.mapping(torch.cat([normalize_2nd_moment(z), normalize_2nd_moment(self.embed(labels))], 1))
        if truncation != 1.0:
            centre = self.w_avg[labels]
            w = centre + truncation * (w - centre)
        return w

    def noise_shapes(self) -> list[tuple[int, int, int]]:
        """The (1, H, W) shape of each synthesis layer's noise input, in layer order."""
        sizes = [4] + [size for size in self.resolutions[1:] for _ in range(2)]
        return [(1, size, size) for size in sizes]

    def synthesize(self, ws: torch.Tensor, noise: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Images from per-layer styles `ws` (B, num_ws, w_dim); `noise` per layer, None draws it."""
        x = self.const[None].expand(ws.shape[0], -1, -1, -1)
        noise = noise if noise is not None else [None] * len(self.layers)
        x = self.layers[0](x.to(precision_at(self, 4, self.lowest_reduced, x)), ws[:, 0], noise[0])
        image = self.to_rgb[0](x, ws[:, 1])
        for block, resolution in enumerate(self.resolutions[1:], start=1):
            first = 2 * block - 1
            x = x.to(precision_at(self, resolution, self.lowest_reduced, x))
            x = self.layers[first](x, ws[:, first], noise[first])
            x = self.layers[first + 1](x, ws[:, first + 1], noise[first + 1])
            image = F.interpolate(image, scale_factor=2, mode="bilinear", align_corners=False)
            image = image + self.to_rgb[block](x, ws[:, first + 2])
        return image

    def forward(
        self,
        z: torch.Tensor,
        labels: torch.Tensor,
        *,
        truncation: float = 1.0,
        noise: list[torch.Tensor] | None = None,
        mix_z: torch.Tensor | None = None,
        mix_cutoff: int | None = None,
        return_ws: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Generate images; with `mix_z`, layers from `mix_cutoff` on take the second latent's w.

        Args:
            z: latents (B, z_dim).
            labels: class indices (B,).
            truncation: psi of the truncation trick (1: none).
            noise: one (B, 1, H, W) tensor per synthesis layer (`noise_shapes`); None draws them.
            mix_z: a second latent per image for style mixing (same class).
            mix_cutoff: the first layer index that uses `mix_z`'s style.
            return_ws: also return the per-layer styles (for the path-length regulariser).
        """
        ws = self.map(z, labels, truncation)[:, None].repeat(1, self.num_ws, 1)
        if mix_z is not None and mix_cutoff is not None:
            mixed = self.map(mix_z, labels, truncation)[:, None].expand(-1, self.num_ws - mix_cutoff, -1)
            ws = torch.cat([ws[:, :mix_cutoff], mixed], dim=1)
        image = self.synthesize(ws, noise)
        return (image, ws) if return_ws else image

    @torch.no_grad()
    def update_w_avg(self, z: torch.Tensor, labels: torch.Tensor, beta: float = 0.995) -> None:
        """Move each class's running mean of w toward this batch's mean w of that class."""
        w = self.map(z, labels)
        for label in labels.unique():
            chosen = labels == label
            self.w_avg[label] = torch.lerp(w[chosen].mean(0), self.w_avg[label], beta)


class DiscriminatorBlock(nn.Module):
    """Two 3 x 3 convolutions (the second halving the size) plus a 1 x 1 skip, summed / sqrt 2."""

    def __init__(self, in_channels: int, out_channels: int, *, clamp: float | None = None) -> None:
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3, clamp=clamp)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3, down=True, clamp=clamp)
        self.skip = EqualConv2d(
            in_channels, out_channels, 1, bias=False, down=True, activation=False, clamp=clamp
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.skip(x) + self.conv1(self.conv0(x))) / SQRT2


def minibatch_std(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """Append the mean standard deviation of features within groups of images as one channel.

    The group is the largest divisor of the batch not above `group_size`, so any batch works.
    """
    batch, channels, height, width = x.shape
    group = max(size for size in range(1, min(group_size, batch) + 1) if batch % size == 0)
    y = x.reshape(group, batch // group, channels, height, width)
    y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (batch / group,)
    y = y.repeat(group).reshape(batch, 1, 1, 1).expand(-1, 1, height, width)
    return torch.cat([x, y], dim=1)


class StyleGAN2Discriminator(ModelMixin, ConfigMixin):
    """Images (B, 3, R, R) and labels (B,) -> logits (B,): residual, minibatch std, projection.

    Args:
        num_classes: classes (as the generator's).
        resolution: input size, a power of two >= 8.
        channel_base: feature maps are channel_base / resolution, at most `channel_max`.
        channel_max: see above.
        mbstd_group: images per minibatch-standard-deviation group (4).
        reduced_precision_resolutions: the highest resolutions whose blocks train in bfloat16
            (as the generator's).
        conv_clamp: every convolution's output limited to +- this (as the generator's).
    """

    @register_to_config
    def __init__(
        self,
        num_classes: int,
        resolution: int = 256,
        channel_base: int = 16384,
        channel_max: int = 512,
        mbstd_group: int = 4,
        reduced_precision_resolutions: int = 0,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        levels = int(math.log2(resolution))
        self.resolutions = [2**level for level in range(levels, 1, -1)]  # R, R/2, ..., 4
        self.lowest_reduced = lowest_reduced_resolution(resolution, reduced_precision_resolutions)
        width = [channels_at(res, channel_base, channel_max) for res in self.resolutions]
        self.from_rgb = EqualConv2d(3, width[0], 1, clamp=conv_clamp)
        self.blocks = nn.ModuleList(
            [DiscriminatorBlock(a, b, clamp=conv_clamp) for a, b in zip(width[:-1], width[1:], strict=True)]
        )
        last = width[-1]
        self.conv = EqualConv2d(last + 1, last, 3, clamp=conv_clamp)
        self.fc = EqualLinear(last * 16, last, activation=True)
        self.out = EqualLinear(last, 1)
        self.embed = nn.Embedding(num_classes, last)
        nn.init.normal_(self.embed.weight)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = self.from_rgb(images.to(precision_at(self, self.resolutions[0], self.lowest_reduced, images)))
        for block, resolution in zip(self.blocks, self.resolutions[:-1], strict=True):
            x = block(x.to(precision_at(self, resolution, self.lowest_reduced, x)))
        x = self.conv(minibatch_std(x.to(self.dtype), self.config.mbstd_group))
        features = self.fc(x.flatten(1))
        projection = (features * self.embed(labels)).sum(dim=1) / math.sqrt(features.shape[1])
        return self.out(features).squeeze(1) + projection


def build_networks(
    options: StyleGAN2Options, num_classes: int
) -> tuple[StyleGAN2Generator, StyleGAN2Discriminator]:
    """Fresh generator and discriminator of the options' sizes."""
    generator = StyleGAN2Generator(
        num_classes=num_classes,
        resolution=options.size,
        z_dim=options.z_dim,
        w_dim=options.w_dim,
        embed_dim=options.embed_dim,
        mapping_layers=options.mapping_layers,
        channel_base=options.channel_base,
        channel_max=options.channel_max,
        reduced_precision_resolutions=options.reduced_precision_resolutions,
        conv_clamp=options.conv_clamp,
    )
    discriminator = StyleGAN2Discriminator(
        num_classes=num_classes,
        resolution=options.size,
        channel_base=options.channel_base,
        channel_max=options.channel_max,
        mbstd_group=options.mbstd_group,
        reduced_precision_resolutions=options.reduced_precision_resolutions,
        conv_clamp=options.conv_clamp,
    )
    return generator, discriminator
