"""ADA's composed augmentation against references that do not use it: torch's and numpy's
whole-pixel moves, per-coordinate and per-pixel formulas, binomial rates and sample spreads."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from trainer.stylegan2.augment import (
    AdaptiveAugment,
    ColourParameters,
    Draw,
    GeometricParameters,
    colour_matrix,
    draw_colour,
    draw_geometric,
    geometric_matrix,
    recolour,
    sampling_grid,
    warp,
)

LN2 = math.log(2.0)


def geometric(batch: int = 1, **values: object) -> GeometricParameters:
    """Identity parameters for `batch` images, with the named ones set (same value for all)."""
    identity = {"x_flip": 1.0, "quarter_turns": 0, "blit": (0.0, 0.0), "scale": 1.0, "pre_rotation": 0.0}
    identity |= {"stretch": 1.0, "post_rotation": 0.0, "shift": (0.0, 0.0)}
    chosen = identity | values

    def column(name: str) -> torch.Tensor:
        dtype = torch.long if name == "quarter_turns" else torch.float64
        value = torch.tensor(chosen[name], dtype=dtype)
        return value.expand(batch, *value.shape).clone()

    return GeometricParameters(**{name: column(name) for name in identity})


def colour(batch: int = 1, **values: float) -> ColourParameters:
    chosen = {"brightness": 0.0, "contrast": 1.0, "luma_flip": 0.0, "hue": 0.0, "saturation": 1.0} | values
    return ColourParameters(**{name: torch.tensor([float(v)] * batch).double() for name, v in chosen.items()})


def shifted(images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Content moved right by dx and down by dy, the border filled by numpy's symmetric reflection."""
    pad = max(abs(dx), abs(dy))
    padded = np.pad(images.numpy(), ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="symmetric")
    height, width = images.shape[2:]
    return torch.from_numpy(padded[:, :, pad - dy : pad - dy + height, pad - dx : pad - dx + width].copy())


def drawn(batch: int, p: float, seed: int, size: int) -> tuple[GeometricParameters, ColourParameters]:
    draw = Draw(batch, torch.device("cpu"), torch.float64, torch.Generator().manual_seed(seed))
    return draw_geometric(draw, size, size, p), draw_colour(draw, p)


def test_whole_pixel_moves_equal_torch_flip_rot90_and_a_reflected_shift() -> None:
    images = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    cases = [
        (geometric(2, x_flip=-1.0), torch.flip(images, dims=[3])),
        (geometric(2, quarter_turns=1), torch.rot90(images, 1, dims=(2, 3))),
        (geometric(2, quarter_turns=2), torch.rot90(images, 2, dims=(2, 3))),
        (geometric(2, quarter_turns=3), torch.rot90(images, 3, dims=(2, 3))),
        (geometric(2, blit=(3.0, -2.0)), shifted(images, 3, -2)),
        # in the paper's order: flip, then a quarter turn, then the blit
        (
            geometric(2, x_flip=-1.0, quarter_turns=1, blit=(-4.0, 5.0)),
            shifted(torch.rot90(torch.flip(images, dims=[3]), 1, dims=(2, 3)), -4, 5),
        ),
    ]
    for parameters, expected in cases:
        torch.testing.assert_close(warp(images, geometric_matrix(parameters)), expected, rtol=0, atol=1e-10)
    single = images.float()
    moved = warp(single, geometric_matrix(geometric(2, quarter_turns=1, blit=(2.0, 1.0))).float())
    torch.testing.assert_close(moved, shifted(torch.rot90(single, 1, dims=(2, 3)), 2, 1), rtol=0, atol=1e-5)


def test_two_transforms_compose_first_to_last_as_a_per_coordinate_mapping() -> None:
    generator = torch.Generator().manual_seed(1)
    s, turn = (0.5 + torch.rand(2, generator=generator)).tolist()
    angle = 2 * math.pi * turn
    tx, ty = torch.randn(2, generator=generator).tolist()
    points = [(0.0, 0.0), (3.5, -1.25), (-7.0, 4.0)]

    def apply(matrix: torch.Tensor, x: float, y: float) -> tuple[float, float]:
        out = matrix[0] @ torch.tensor([x, y, 1.0], dtype=torch.float64)
        return float(out[0]), float(out[1])

    stretch_then_rotate = geometric_matrix(geometric(stretch=s, post_rotation=angle))
    rotate_then_shift = geometric_matrix(geometric(pre_rotation=angle, shift=(tx, ty)))
    for x, y in points:
        sx, sy = s * x, y / s  # anisotropic scaling first, then the rotation
        expected = (math.cos(angle) * sx - math.sin(angle) * sy, math.sin(angle) * sx + math.cos(angle) * sy)
        assert apply(stretch_then_rotate, x, y) == pytest.approx(expected, abs=1e-12)
        rx, ry = math.cos(angle) * x - math.sin(angle) * y, math.sin(angle) * x + math.cos(angle) * y
        assert apply(rotate_then_shift, x, y) == pytest.approx((rx + tx, ry + ty), abs=1e-12)
    # the same, written as hand-built matrices multiplied last-first
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = torch.tensor([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]], dtype=torch.float64)
    stretch = torch.diag(torch.tensor([s, 1 / s, 1.0], dtype=torch.float64))
    torch.testing.assert_close(stretch_then_rotate[0], rotation @ stretch)


def test_the_sampling_grid_sends_each_output_pixel_centre_back_through_the_matrix() -> None:
    height, width = 12, 20  # not square, so that x and y cannot be swapped unnoticed
    parameters, _ = drawn(3, p=1.0, seed=2, size=16)
    matrix = geometric_matrix(parameters)
    grid = sampling_grid(matrix, height, width)
    # grid_sample's input position in pixels, from its documented align_corners=False convention
    column = ((grid[..., 0] + 1) * width - 1) / 2
    row = ((grid[..., 1] + 1) * height - 1) / 2
    source = torch.stack([column + 0.5 - width / 2, row + 0.5 - height / 2, torch.ones_like(row)], dim=-1)
    lands = torch.einsum("nij,nhwj->nhwi", matrix, source)
    rows, columns = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    centres = torch.stack([columns + 0.5 - width / 2, rows + 0.5 - height / 2], dim=-1).double()
    torch.testing.assert_close(lands[..., :2], centres.expand(3, -1, -1, -1))


def test_a_smooth_image_is_sampled_where_the_inverse_sends_each_pixel() -> None:
    size = 32
    matrix = geometric_matrix(geometric(scale=1.15, pre_rotation=0.4, shift=(1.3, -0.7)))
    centred = torch.arange(size, dtype=torch.float64) + 0.5 - size / 2
    y, x = torch.meshgrid(centred, centred, indexing="ij")

    def smooth(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.sin(2 * math.pi * (x + 0.5 * y) / 32)  # wavelength about 29 px

    image = smooth(x, y).expand(1, 3, size, size)
    inverse = np.linalg.inv(matrix[0].numpy())
    source_x = inverse[0, 0] * x + inverse[0, 1] * y + inverse[0, 2]
    source_y = inverse[1, 0] * x + inverse[1, 1] * y + inverse[1, 2]
    inside = (source_x.abs() < size / 2 - 3) & (source_y.abs() < size / 2 - 3)
    error = (warp(image, matrix)[0, 0] - smooth(source_x, source_y))[inside]
    # Keys' cubic (a = -0.75) places a ramp up to 0.05 px off: 0.05 x slope 2 pi x 1.1 / 32 = 0.011
    assert inside.sum() > 100 and float(error.abs().max()) < 0.02


def test_a_half_pixel_shift_spreads_an_impulse_by_keys_cubic() -> None:
    def keys(distance: float, a: float = -0.75) -> float:  # Keys 1981, PyTorch's bicubic
        d = abs(distance)
        if d >= 2:
            return 0.0
        return (a + 2) * d**3 - (a + 3) * d**2 + 1 if d <= 1 else a * (d**3 - 5 * d**2 + 8 * d - 4)

    image = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    image[:, :, 4, 3] = 1.0
    moved = warp(image, geometric_matrix(geometric(shift=(0.5, 0.0))))[0, 0, 4]
    expected = [keys(column - 0.5 - 3) for column in range(8)]  # column j samples x = j - 0.5
    assert moved.tolist() == pytest.approx(expected, abs=1e-12)


def per_pixel(images: torch.Tensor, function) -> torch.Tensor:
    """`function` of each pixel's (r, g, b) as a numpy vector, one pixel at a time."""
    out = images.clone()
    for n, row, col in np.ndindex(images.shape[0], *images.shape[2:]):
        out[n, :, row, col] = torch.from_numpy(function(images[n, :, row, col].numpy()))
    return out


def hue_rotated(rgb: np.ndarray, angle: float) -> np.ndarray:
    """Turn the chroma by `angle` in the plane normal to grey, in a right-handed basis (u, w, v)."""
    v = np.ones(3) / math.sqrt(3)
    u = np.array([1.0, -1.0, 0.0]) / math.sqrt(2)
    w = np.cross(v, u)
    a, b = rgb @ u, rgb @ w
    turned = (a * math.cos(angle) - b * math.sin(angle)) * u + (a * math.sin(angle) + b * math.cos(angle)) * w
    return (rgb @ v) * v + turned


def test_each_colour_transform_matches_its_per_pixel_definition() -> None:
    images = torch.rand(2, 3, 3, 4, dtype=torch.float64) * 2 - 1
    cases = [
        (colour(2, brightness=0.3), lambda x: x + 0.3),
        (colour(2, contrast=1.7), lambda x: 1.7 * x),
        (colour(2, luma_flip=1.0), lambda x: x - 2 * x.mean()),
        (colour(2, hue=2.1), lambda x: hue_rotated(x, 2.1)),
        (colour(2, saturation=0.4), lambda x: x.mean() + 0.4 * (x - x.mean())),
    ]
    for parameters, function in cases:
        torch.testing.assert_close(recolour(images, colour_matrix(parameters)), per_pixel(images, function))
    # all five in the paper's order: brightness, contrast, luma flip, hue, saturation
    everything = colour(2, brightness=-0.2, contrast=0.8, luma_flip=1.0, hue=-1.0, saturation=1.9)

    def in_order(x: np.ndarray) -> np.ndarray:
        x = 0.8 * (x - 0.2)
        x = hue_rotated(x - 2 * x.mean(), -1.0)
        return x.mean() + 1.9 * (x - x.mean())

    torch.testing.assert_close(recolour(images, colour_matrix(everything)), per_pixel(images, in_order))


def test_colour_transforms_keep_what_the_paper_says_they_keep() -> None:
    images = torch.rand(4, 3, 5, 5, dtype=torch.float64) * 2 - 1
    luma = images.mean(dim=1)
    grey_distance = (images - luma[:, None]).norm(dim=1)
    hued = recolour(images, colour_matrix(colour(4, hue=1.3)))
    torch.testing.assert_close(hued.mean(dim=1), luma)  # v . x kept
    torch.testing.assert_close((hued - hued.mean(dim=1, keepdim=True)).norm(dim=1), grey_distance)
    assert not torch.allclose(hued, images)
    greyed = recolour(images, colour_matrix(colour(4, saturation=0.0)))
    torch.testing.assert_close(greyed, luma[:, None].expand_as(images))  # saturation 0: grey
    grey = torch.full((1, 3, 2, 2), 0.35, dtype=torch.float64)
    torch.testing.assert_close(recolour(grey, colour_matrix(colour(luma_flip=1.0))), -grey)
    flipped = recolour(images, colour_matrix(colour(4, luma_flip=1.0)))
    torch.testing.assert_close(recolour(flipped, colour_matrix(colour(4, luma_flip=1.0))), images)


def binomial_close(hits: torch.Tensor, rate: float) -> None:
    """The observed fraction within 5 standard errors of the binomial with `rate`."""
    tolerance = 5 * math.sqrt(rate * (1 - rate) / hits.numel())
    assert float(hits.double().mean()) == pytest.approx(rate, abs=tolerance)


def test_each_transform_is_chosen_for_about_p_of_the_images() -> None:
    p, batch, size = 0.3, 20_000, 1024
    g, c = drawn(batch, p, seed=3, size=size)
    p_rot = 1 - math.sqrt(1 - p)
    binomial_close(g.x_flip == -1, p / 2)  # chosen with p, then i from {0, 1}
    binomial_close(g.quarter_turns != 0, 3 * p / 4)  # chosen with p, then 0 to 3 quarters
    binomial_close((g.blit != 0).any(dim=1), p * (1 - (4 / size) ** 2))  # both round to 0: (4 / size)^2
    for values, identity in [(g.scale, 1), (g.stretch, 1), (c.contrast, 1), (c.saturation, 1)]:
        binomial_close(values != identity, p)
    for values in (c.brightness, c.hue):
        binomial_close(values != 0, p)
    binomial_close((g.shift != 0).any(dim=1), p)
    binomial_close(c.luma_flip == 1, p / 2)
    binomial_close(g.pre_rotation != 0, p_rot)
    binomial_close(g.post_rotation != 0, p_rot)
    binomial_close((g.pre_rotation != 0) | (g.post_rotation != 0), p)  # rotated at all: p
    binomial_close((g.scale != 1) & (c.contrast != 1), p * p)  # drawn independently


def test_the_drawn_values_have_the_papers_distributions() -> None:
    batch, size = 20_000, 256
    g, c = drawn(batch, 1.0, seed=4, size=size)
    relative = 5 / math.sqrt(2 * batch)  # 5 standard errors of a normal sample's std

    def normal_close(values: torch.Tensor, std: float) -> None:
        assert float(values.std()) == pytest.approx(std, rel=relative)
        assert float(values.mean()) == pytest.approx(0.0, abs=5 * std / math.sqrt(values.numel()))

    normal_close(g.scale.log(), 0.2 * LN2)
    normal_close(g.stretch.log(), 0.2 * LN2)
    normal_close(g.shift.flatten() / size, 0.125)
    normal_close(c.brightness, 0.2)
    normal_close(c.contrast.log(), 0.5 * LN2)
    normal_close(c.saturation.log(), LN2)
    for angles in (g.pre_rotation, g.post_rotation, c.hue):  # uniform in [-pi, pi]: variance pi^2 / 3
        assert -math.pi <= float(angles.min()) and float(angles.max()) <= math.pi
        assert float(angles.var()) == pytest.approx(math.pi**2 / 3, rel=5 * math.sqrt(0.8 / batch))
    blit = g.blit.flatten()
    assert torch.equal(blit, blit.round()) and float(blit.abs().max()) == 0.125 * size
    assert float(blit.var()) == pytest.approx((0.25 * size) ** 2 / 12, rel=0.05)
    for turns in range(4):
        binomial_close(g.quarter_turns == turns, 1 / 4)


def test_p0_passes_images_through_and_p1_changes_them_with_finite_gradients() -> None:
    images = torch.rand(4, 3, 16, 16, requires_grad=True)
    assert AdaptiveAugment(p=0.0)(images) is images
    assert AdaptiveAugment(p=0.7, enabled=False)(images) is images
    torch.manual_seed(5)
    augmented = AdaptiveAugment(p=1.0)(images * 2 - 1)
    assert augmented.shape == images.shape and not torch.allclose(augmented, images * 2 - 1)
    (gradient,) = torch.autograd.grad(augmented.square().mean(), images, create_graph=True)
    assert bool(torch.isfinite(gradient).all()) and float(gradient.detach().abs().sum()) > 0
    gradient.square().sum().backward()  # R1 differentiates the gradient again
    assert bool(torch.isfinite(images.grad).all()) and float(images.grad.abs().sum()) > 0
    half = AdaptiveAugment(p=1.0)(torch.zeros(2, 3, 8, 8, dtype=torch.bfloat16))
    assert half.dtype == torch.bfloat16


class Operations(TorchDispatchMode):
    """The aten operations run inside the block."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def test_forward_reads_no_tensor_on_the_host_and_makes_none_from_python_numbers() -> None:
    """What would wait for a GPU: .item(), float() or bool() of a tensor (all _local_scalar_dense),
    and tensors made from Python numbers (lift_fresh), which are copied from the host."""
    augment = AdaptiveAugment(p=0.5)
    images = torch.rand(4, 3, 16, 16, requires_grad=True)
    with Operations() as operations:
        augment(images).sum().backward()
    assert "aten.grid_sampler_2d" in operations.seen  # the mode saw the work
    assert not {"aten._local_scalar_dense", "aten.lift_fresh"} & operations.seen


def test_the_state_holds_p_and_r_t_only_and_loading_it_sets_p() -> None:
    augment = AdaptiveAugment(interval=1, speed_images=10)
    assert list(augment.state_dict()) == ["p", "sign_sum", "sign_count"]
    augment.accumulate(torch.ones(3))
    augment.adjust(4)
    assert augment.p_on_host == float(augment.p) == pytest.approx(0.4)
    again = AdaptiveAugment()
    again.load_state_dict(augment.state_dict())
    assert again.p_on_host == pytest.approx(0.4)
    images = torch.rand(8, 3, 8, 8)
    assert not torch.equal(again(images), images)
