"""Image decoding: every supported layout becomes RGB uint8; broken files fail by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from histosynth.errors import ImageError
from histosynth.images import load_rgb


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, size=(24, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".tiff"])
def test_lossless_rgb_round_trips(tmp_path: Path, rgb: np.ndarray, suffix: str) -> None:
    path = tmp_path / f"tile{suffix}"
    Image.fromarray(rgb).save(path)
    np.testing.assert_array_equal(load_rgb(path), rgb)


def test_jpeg_decodes_close_to_source(tmp_path: Path, rgb: np.ndarray) -> None:
    smooth = np.asarray(Image.fromarray(rgb).resize((256, 256), Image.Resampling.BILINEAR))
    path = tmp_path / "tile.JPG"
    Image.fromarray(smooth).save(path, quality=95)
    decoded = load_rgb(path)
    assert decoded.dtype == np.uint8 and decoded.shape == (256, 256, 3)
    assert np.abs(decoded.astype(int) - smooth).mean() < 3


def test_rgba_drops_alpha(tmp_path: Path, rgb: np.ndarray) -> None:
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 17, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_rgb(tmp_path / "a.png"), rgb)


def test_grayscale_is_replicated(tmp_path: Path, rgb: np.ndarray) -> None:
    gray = rgb[:, :, 0]
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    loaded = load_rgb(tmp_path / "g.png")
    for channel in range(3):
        np.testing.assert_array_equal(loaded[:, :, channel], gray)


def test_16bit_grayscale_png_scales_to_8bit(tmp_path: Path) -> None:
    values = np.array([[0, 257, 65535], [32896, 514, 1000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    loaded = load_rgb(tmp_path / "g16.png")
    expected = np.rint(values / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(loaded[:, :, 1], expected)


def test_16bit_rgb_tiff_scales_to_8bit(tmp_path: Path, rgb: np.ndarray) -> None:
    wide = rgb.astype(np.uint16) * 257  # exact 8 -> 16 bit expansion
    tifffile.imwrite(tmp_path / "scan.tif", wide, photometric="rgb")
    np.testing.assert_array_equal(load_rgb(tmp_path / "scan.tif"), rgb)


def test_palette_png(tmp_path: Path, rgb: np.ndarray) -> None:
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "p.png")
    loaded = load_rgb(tmp_path / "p.png")
    assert loaded.shape == rgb.shape and loaded.dtype == np.uint8


def test_resize_is_bilinear_to_size(tmp_path: Path, rgb: np.ndarray) -> None:
    Image.fromarray(rgb).save(tmp_path / "t.png")
    resized = load_rgb(tmp_path / "t.png", size=256)
    reference = np.asarray(Image.fromarray(rgb).resize((256, 256), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(resized, reference)


def test_truncated_png_names_the_file(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "cut.png"
    Image.fromarray(rgb).save(path)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(ImageError, match="cut.png"):
        load_rgb(path)


def test_corrupt_tiff_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.tif"
    path.write_bytes(b"II*\x00garbage" * 10)
    with pytest.raises(ImageError, match="bad.tif"):
        load_rgb(path)


def test_missing_and_unsupported_files(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no such image"):
        load_rgb(tmp_path / "absent.png")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImageError, match="notes.txt"):
        load_rgb(tmp_path / "notes.txt")


def test_dark_16bit_and_float_images_keep_their_range(tmp_path: Path) -> None:
    dark = np.array([[0, 100, 255]], dtype=np.uint16)  # 16-bit values that happen to be <= 255
    Image.fromarray(dark).save(tmp_path / "dark16.png")
    np.testing.assert_array_equal(load_rgb(tmp_path / "dark16.png")[0, :, 0], [0, 0, 1])
    tifffile.imwrite(tmp_path / "float.tif", np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    np.testing.assert_array_equal(load_rgb(tmp_path / "float.tif")[0, :, 0], [0, 128, 255])
    tifffile.imwrite(tmp_path / "float255.tif", np.array([[0.0, 128.0, 255.0]], dtype=np.float32))
    with pytest.raises(ImageError, match="float255.tif: floating-point pixels must lie within 0..1"):
        load_rgb(tmp_path / "float255.tif")
