"""Adaptive discriminator augmentation (ADA, Karras et al. 2020b) as one warp and one colour matrix.

Every image the discriminator sees, real or generated, passes through the same pipeline, each
transform applied to each image independently with one probability p. Because the pipeline is
differentiable, the generator is trained through it and never learns to produce augmented
images (they "do not leak" for p below about 0.8, paper section 2.3). The set and its order are
the paper's "bgc" pipeline (appendix B):

* geometric: x-flip, 90-degree rotation, integer translation (up to 0.125 of the size, whole
  pixels), isotropic scaling (lognormal, std 0.2 ln 2), rotation (uniform in [-pi, pi]),
  anisotropic scaling (x by s, y by 1/s, lognormal, std 0.2 ln 2), rotation again, fractional
  translation (normal, std 0.125 of the size). The rotation is drawn before and after the
  anisotropic scaling, each time with p_rot = 1 - sqrt(1 - p): the scaling gets an arbitrary axis
  and an image is rotated at all with probability 1 - (1 - p_rot)^2 = p, as the paper does. A
  chosen x-flip (and luma flip) flips with probability 1/2, and a chosen 90-degree rotation turns
  by 0 to 3 quarters, as in the paper, so those change p/2 and 3p/4 of the images.
* colour, on images in [-1, 1] (0 is mid-grey, so contrast and saturation act about it as in
  the paper): brightness (add b, normal std 0.2), contrast (multiply by lognormal std
  0.5 ln 2), luma flip (I - 2 v v^T, v = (1, 1, 1) / sqrt 3), hue rotation (about v by uniform
  [-pi, pi]) and saturation (v v^T + s (I - v v^T), lognormal std ln 2).

Each part composes into one matrix per image, so whatever was drawn, an image is resampled once
and recoloured by one batched matmul: a 3x3 map of pixel coordinates centred on the image and a
4x4 map of [r, g, b, 1]. Nothing is clamped: every step is linear in the pixels, so gradients
pass everywhere (also the gradients of gradients that R1 takes).

What differs from the paper is the resampling. The paper pads by reflection, upsamples x2 with
a sym6 wavelet filter, warps bilinearly and downsamples again, to approach ideal band-limited
resampling. Here one `grid_sample` does it, bicubic (PyTorch's Keys kernel, a = -0.75): much
closer to band-limited than bilinear, whose blur changes with the sub-pixel offset (none at a
whole pixel, a two-pixel average halfway), which would smooth histology's fine texture unevenly.
It reads 16 taps instead of 4, and on a CPU PyTorch's bicubic path is several times its
bilinear one, most of this module's time (`benchmarks/ada_speed.py`); it overshoots a little at
edges (no clamp), places a linear ramp up to 0.05 px off at fractional offsets, and like the
paper's filter does not prefilter when shrinking. Padding reflects about the image's border
(align_corners=False, pixel i covering [i, i + 1)), so the edge pixel repeats (numpy's
"symmetric"), where the paper's reflect pad mirrors about the edge pixel's centre. Whole-pixel
moves (flips, quarter turns of a square image, integer translation) land on pixel centres and
come out exact to float rounding, as the paper's blit.

p is tuned from the overfitting heuristic r_t = E[sign(D(x_real))]: every `interval` steps it
moves by sign(r_t - target) x (images seen) / (images for 0 -> 1), and stays in [0, 1]. The
random numbers are drawn on the images' device and forward reads p from a host copy that
`adjust` and `load_state_dict` keep equal to the buffer: the buffer follows the module to the
GPU, where reading it would wait for all queued work at each of the three calls of a step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import reduce

import torch
import torch.nn.functional as F
from torch import nn

from histosynth.errors import HistosynthError

SCALE_STD = 0.2 * math.log(2.0)  # isotropic and anisotropic scaling, log of the factor
BLIT_RANGE = 0.125  # integer translation: uniform up to this fraction of the size
SHIFT_STD = 0.125  # fractional translation, a fraction of the size
BRIGHTNESS_STD = 0.2
CONTRAST_STD = 0.5 * math.log(2.0)
SATURATION_STD = math.log(2.0)


@dataclass(frozen=True)
class GeometricParameters:
    """Each geometric transform's value per image (batch first), its identity where not drawn.

    Positions are pixels from the image's centre, x to the right and y down; `blit` and `shift`
    are (x, y) pairs; angles are radians, rotating (x, y) by [[cos, -sin], [sin, cos]].
    """

    x_flip: torch.Tensor  # -1 mirrors x, 1 keeps
    quarter_turns: torch.Tensor  # 0 to 3, each as torch.rot90(image, 1, dims=(-2, -1))
    blit: torch.Tensor  # whole pixels
    scale: torch.Tensor
    pre_rotation: torch.Tensor
    stretch: torch.Tensor  # x by stretch, y by 1 / stretch
    post_rotation: torch.Tensor
    shift: torch.Tensor  # fractional pixels


@dataclass(frozen=True)
class ColourParameters:
    """Each colour transform's value per image, its identity where not drawn."""

    brightness: torch.Tensor  # added to r, g and b
    contrast: torch.Tensor  # factor about 0
    luma_flip: torch.Tensor  # 1 reflects about the grey axis, 0 keeps
    hue: torch.Tensor  # rotation about the grey axis, radians
    saturation: torch.Tensor  # factor of the distance from the grey axis


class Draw:
    """Random numbers for a batch on one device (from `generator`, or torch's own where None)."""

    def __init__(
        self, batch: int, device: torch.device, dtype: torch.dtype, generator: torch.Generator | None
    ) -> None:
        self.batch, self.device, self.dtype, self.generator = batch, device, dtype, generator

    def chosen(self, p: float) -> torch.Tensor:
        """Whether each image gets a transform of probability p."""
        return self.uniform(0.0, 1.0) < p

    def uniform(self, low: float, high: float, *shape: int) -> torch.Tensor:
        unit = torch.rand(self.batch, *shape, device=self.device, dtype=self.dtype, generator=self.generator)
        return low + (high - low) * unit

    def normal(self, std: float, *shape: int) -> torch.Tensor:
        unit = torch.randn(self.batch, *shape, device=self.device, dtype=self.dtype, generator=self.generator)
        return std * unit

    def lognormal(self, std: float) -> torch.Tensor:
        return self.normal(std).exp()

    def quarters(self) -> torch.Tensor:
        return torch.randint(0, 4, (self.batch,), device=self.device, generator=self.generator)

    def flips(self, p: float) -> torch.Tensor:
        """1 where a transform chosen with probability p then flips a fair coin (the paper's i), else 0."""
        return (self.chosen(p) & self.chosen(0.5)).to(self.dtype)


def in_pixels(fractions: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(x, y) fractions of the size in pixels (without a tensor of the sizes: a copy to the GPU)."""
    return torch.stack([fractions[:, 0] * width, fractions[:, 1] * height], dim=1)


def draw_geometric(draw: Draw, height: int, width: int, p: float) -> GeometricParameters:
    """The paper's geometric draws, in its order, each transform chosen with probability p."""
    p_rot = 1.0 - math.sqrt(1.0 - p)
    x_flip = 1.0 - 2.0 * draw.flips(p)
    turns = torch.where(draw.chosen(p), draw.quarters(), 0)
    blit = in_pixels(draw.uniform(-BLIT_RANGE, BLIT_RANGE, 2), height, width).round()
    blit = torch.where(draw.chosen(p)[:, None], blit, 0)
    scale = torch.where(draw.chosen(p), draw.lognormal(SCALE_STD), 1)
    pre_rotation = torch.where(draw.chosen(p_rot), draw.uniform(-math.pi, math.pi), 0)
    stretch = torch.where(draw.chosen(p), draw.lognormal(SCALE_STD), 1)
    post_rotation = torch.where(draw.chosen(p_rot), draw.uniform(-math.pi, math.pi), 0)
    shift = torch.where(draw.chosen(p)[:, None], in_pixels(draw.normal(SHIFT_STD, 2), height, width), 0)
    return GeometricParameters(x_flip, turns, blit, scale, pre_rotation, stretch, post_rotation, shift)


def draw_colour(draw: Draw, p: float) -> ColourParameters:
    """The paper's colour draws, in its order, each transform chosen with probability p."""
    brightness = torch.where(draw.chosen(p), draw.normal(BRIGHTNESS_STD), 0)
    contrast = torch.where(draw.chosen(p), draw.lognormal(CONTRAST_STD), 1)
    luma_flip = draw.flips(p)
    hue = torch.where(draw.chosen(p), draw.uniform(-math.pi, math.pi), 0)
    saturation = torch.where(draw.chosen(p), draw.lognormal(SATURATION_STD), 1)
    return ColourParameters(brightness, contrast, luma_flip, hue, saturation)


def affine2d(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor, shift: torch.Tensor | None = None
) -> torch.Tensor:
    """Homogeneous 3x3 matrices [[a, b, tx], [c, d, ty], [0, 0, 1]], one per image."""
    zero, one = torch.zeros_like(a), torch.ones_like(a)
    tx, ty = (zero, zero) if shift is None else shift.unbind(dim=1)
    return torch.stack([a, b, tx, c, d, ty, zero, zero, one], dim=1).reshape(-1, 3, 3)


def rotation2d(angle: torch.Tensor) -> torch.Tensor:
    cos, sin = angle.cos(), angle.sin()
    return affine2d(cos, -sin, sin, cos)


def quarter_turns2d(turns: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """torch.rot90's quarter turn, (x, y) -> (y, -x) with y down, `turns` times; exact 0 and +-1."""
    angle = -0.5 * math.pi * turns.to(dtype)
    cos, sin = angle.cos().round(), angle.sin().round()
    return affine2d(cos, -sin, sin, cos)


def translation2d(shift: torch.Tensor) -> torch.Tensor:
    one = torch.ones_like(shift[:, 0])
    return affine2d(one, 0 * one, 0 * one, one, shift)


def scaling2d(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    return affine2d(sx, 0 * sx, 0 * sx, sy)


def geometric_matrix(parameters: GeometricParameters) -> torch.Tensor:
    """Where each input point goes in the output: the transforms composed in the paper's order.

    Returns (N, 3, 3) matrices M with output = M @ [x, y, 1], coordinates as in
    `GeometricParameters`; the first transform is the rightmost factor.
    """
    q = parameters
    ones = torch.ones_like(q.scale)
    steps = [
        scaling2d(q.x_flip, ones),
        quarter_turns2d(q.quarter_turns, q.scale.dtype),
        translation2d(q.blit),
        scaling2d(q.scale, q.scale),
        rotation2d(q.pre_rotation),
        scaling2d(q.stretch, 1.0 / q.stretch),
        rotation2d(q.post_rotation),
        translation2d(q.shift),
    ]
    return reduce(lambda done, step: step @ done, steps)


def sampling_grid(matrix: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`grid_sample`'s grid for a warp by `matrix`: each output pixel centre mapped back.

    The inverse takes output pixel centres to input positions; conjugating it with the scaling of
    centred pixels to grid_sample's [-1, 1] (align_corners=False: pixel i's centre is
    (2 i + 1) / size - 1) gives the `affine_grid` matrix. `inv_ex` checks nothing on the host.
    """
    ones = torch.ones_like(matrix[:, 0, 0])
    to_unit = scaling2d(ones * (2.0 / width), ones * (2.0 / height))
    to_pixels = scaling2d(ones * (width / 2.0), ones * (height / 2.0))
    theta = to_unit @ torch.linalg.inv_ex(matrix).inverse @ to_pixels
    return F.affine_grid(theta[:, :2], [matrix.shape[0], 1, height, width], align_corners=False)


def warp(images: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Resample each image once by its matrix: bicubic, reflection about the border."""
    grid = sampling_grid(matrix, images.shape[2], images.shape[3])
    return F.grid_sample(images, grid, mode="bicubic", padding_mode="reflection", align_corners=False)


def colour_affine(linear: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """Homogeneous 4x4 matrices from (N, 3, 3) linear parts and (N, 3) offsets."""
    matrix = torch.eye(4, dtype=linear.dtype, device=linear.device).repeat(linear.shape[0], 1, 1)
    matrix[:, :3, :3] = linear
    if offset is not None:
        matrix[:, :3, 3] = offset
    return matrix


def colour_matrix(parameters: ColourParameters) -> torch.Tensor:
    """What each pixel's [r, g, b, 1] becomes: the transforms composed in the paper's order.

    Returns (N, 4, 4) matrices; the first transform (brightness) is the rightmost factor.
    """
    q = parameters
    eye = torch.eye(3, dtype=q.hue.dtype, device=q.hue.device)
    v = torch.full((3,), 1.0 / math.sqrt(3.0), dtype=q.hue.dtype, device=q.hue.device)
    grey = torch.outer(v, v)  # projection onto the grey axis
    cross = torch.linalg.cross(v.expand(3, 3), eye).T  # columns v x e_i, so cross @ x = v x x
    cos, sin = q.hue.cos()[:, None, None], q.hue.sin()[:, None, None]
    steps = [
        colour_affine(eye.expand(len(q.hue), 3, 3), q.brightness[:, None].expand(-1, 3)),
        colour_affine(q.contrast[:, None, None] * eye),
        colour_affine(eye - 2.0 * q.luma_flip[:, None, None] * grey),
        colour_affine(cos * eye + sin * cross + (1.0 - cos) * grey),  # Rodrigues' formula about v
        colour_affine(grey + q.saturation[:, None, None] * (eye - grey)),
    ]
    return reduce(lambda done, step: step @ done, steps)


def recolour(images: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Apply each image's 4x4 colour matrix to all its pixels in one batched matmul."""
    pixels = images.reshape(images.shape[0], 3, -1)
    return torch.baddbmm(matrix[:, :3, 3:], matrix[:, :3, :3], pixels).reshape(images.shape)


def augment(images: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """The whole pipeline at probability p on (N, 3, H, W) images in [-1, 1]; differentiable.

    The work is in float32 at least (a bf16 sampling grid would misplace pixels) and the result
    in the images' dtype.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise HistosynthError(f"ADA takes (N, 3, H, W) images, got shape {tuple(images.shape)}")
    dtype = torch.promote_types(images.dtype, torch.float32)
    draw = Draw(images.shape[0], images.device, dtype, generator)
    geometric = geometric_matrix(draw_geometric(draw, images.shape[2], images.shape[3], p))
    colour = colour_matrix(draw_colour(draw, p))
    return recolour(warp(images.to(dtype), geometric), colour).to(images.dtype)


def read_p_after_load(module: AdaptiveAugment, incompatible_keys: object) -> None:
    """`load_state_dict`'s post-hook: refresh the host copy of p from the loaded buffer."""
    module.p_on_host = float(module.p)


class AdaptiveAugment(nn.Module):
    """The pipeline, its probability p and the r_t accumulator (all in `state_dict`, for resume).

    Args:
        target: r_t the heuristic steers toward (0.6 in the paper).
        interval: steps between adjustments of p (4).
        speed_images: images over which p can move from 0 to 1 (500,000 in the paper).
        p: the starting probability.
        enabled: False keeps p at 0 and passes images through (no ADA).
    """

    def __init__(
        self,
        *,
        target: float = 0.6,
        interval: int = 4,
        speed_images: int = 500_000,
        p: float = 0.0,
        enabled: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise HistosynthError(f"--ada-p {p}: must lie in [0, 1]")
        if interval < 1 or speed_images < 1:
            raise HistosynthError("--ada-interval and --ada-speed must be at least 1")
        self.target = target
        self.interval = interval
        self.speed_images = speed_images
        self.enabled = enabled
        self.register_buffer("p", torch.tensor(float(p) if enabled else 0.0, dtype=torch.float64))
        self.register_buffer("sign_sum", torch.zeros((), dtype=torch.float64))
        self.register_buffer("sign_count", torch.zeros((), dtype=torch.float64))
        self.p_on_host = float(self.p)
        self.register_load_state_dict_post_hook(read_p_after_load)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Augment each image with probability p per transform (differentiable); p = 0 passes through."""
        if not self.enabled or self.p_on_host == 0.0:
            return images
        return augment(images, self.p_on_host)

    @torch.no_grad()
    def accumulate(self, real_logits: torch.Tensor) -> None:
        """Add the signs of the discriminator's logits on (augmented) real images to r_t."""
        self.sign_sum += real_logits.detach().sign().sum().to(self.sign_sum)
        self.sign_count += real_logits.numel()

    @torch.no_grad()
    def adjust(self, images_per_step: int) -> float | None:
        """Update p from r_t gathered over the last `interval` steps; returns r_t (None: no data)."""
        if not self.enabled or float(self.sign_count) == 0.0:
            return None
        r_t = float(self.sign_sum / self.sign_count)
        direction = float(r_t > self.target) - float(r_t < self.target)
        change = direction * images_per_step * self.interval / self.speed_images
        self.p.copy_(torch.clamp(self.p + change, 0.0, 1.0))
        self.p_on_host = float(self.p)
        self.sign_sum.zero_()
        self.sign_count.zero_()
        return r_t
