"""Macenko normalisation for the classifier: the shipped reference, the pass-through rule, the cache.

Tissue comes from the demo's sheet of real H&E crops (rater_app/demo_tiles/cmu_tiles.jpg, read as a
file), so these tests see real stain statistics with or without ../shared.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import trainer.classifier.stain as stain
from histosynth.errors import HistosynthError
from histosynth.images import load_rgb
from trainer.classifier.stain import MIN_TISSUE_FRACTION, default_reference, fit_normalizer, prepare_tiles

SHEET = Path(__file__).resolve().parents[2] / "rater_app" / "demo_tiles" / "cmu_tiles.jpg"


def sheet_crop(index: int, size: int = 224) -> np.ndarray:
    """Crop `index` of the demo sheet in reading order (0..39 are tissue, 40..47 background)."""
    sheet = load_rgb(SHEET)
    row, col = divmod(index, sheet.shape[1] // 224)
    return np.ascontiguousarray(sheet[row * 224 : row * 224 + size, col * 224 : col * 224 + size])


def test_the_shipped_reference_is_tissue_and_agrees_with_torchstains_torch_backend() -> None:
    normalizer = fit_normalizer()
    assert normalizer.reference == default_reference() and normalizer.reference.is_file()
    assert stain.tissue_fraction(load_rgb(default_reference())) > 0.5
    tile = sheet_crop(17)
    normalized, changed = normalizer.normalize(tile)
    assert changed and normalized.shape == tile.shape and normalized.dtype == np.uint8
    from torchstain.torch.normalizers import TorchMacenkoNormalizer  # the second implementation

    def to_chw(rgb: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float()

    reference = TorchMacenkoNormalizer()
    reference.fit(to_chw(load_rgb(default_reference())))
    expected, _, _ = reference.normalize(to_chw(tile), stains=False)
    difference = np.abs(expected.numpy().astype(float) - normalized.astype(float))
    assert np.median(difference) <= 2.0 and np.mean(difference) < 4.0


def blank_tiles() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "white": np.full((40, 40, 3), 255, np.uint8),
        "glass": np.full((40, 40, 3), 236, np.uint8),
        "black": np.zeros((40, 40, 3), np.uint8),
        "gray": np.full((40, 40, 3), 120, np.uint8),
        "speck": np.where(rng.random((40, 40, 1)) < 0.01, 90, 245).repeat(3, axis=2).astype(np.uint8),
        "noise": rng.integers(0, 256, (40, 40, 3), dtype=np.uint8),
    }


def test_blank_and_degenerate_tiles_never_crash_and_pass_through_unchanged(tmp_path: Path) -> None:
    normalizer = fit_normalizer()
    for name, tile in blank_tiles().items():
        result, changed = normalizer.normalize(tile)
        assert result.shape == tile.shape and result.dtype == np.uint8, name
        if not changed:
            assert np.array_equal(result, tile), name
    assert not normalizer.normalize(blank_tiles()["white"])[1]
    assert not normalizer.normalize(blank_tiles()["speck"])[1]  # 1% tissue < MIN_TISSUE_FRACTION
    assert MIN_TISSUE_FRACTION > 0.01
    for index in range(40, 48):  # the sheet's real background crops (glass)
        background = sheet_crop(index)
        result, changed = normalizer.normalize(background)
        assert not changed and np.array_equal(result, background)
    files = []
    for name, tile in blank_tiles().items():
        Image.fromarray(tile).save(tmp_path / f"{name}.png")
        files.append(tmp_path / f"{name}.png")
    prepared = prepare_tiles(files, normalizer, 32)
    assert {path.name for path in prepared.passed_through} >= {"white.png", "glass.png", "speck.png"}
    white = np.load(prepared.arrays[tmp_path / "white.png"])
    assert white.shape == (32, 32, 3) and (white == 255).all()


def test_a_blank_reference_is_refused(tmp_path: Path) -> None:
    Image.fromarray(np.full((64, 64, 3), 250, np.uint8)).save(tmp_path / "glass.png")
    with pytest.raises(HistosynthError, match=r"glass.png: 0.0% of its pixels are tissue"):
        fit_normalizer(tmp_path / "glass.png")


def test_tiles_are_cached_by_content_and_reference(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "tile.png"
    Image.fromarray(sheet_crop(3, 56)).save(path)
    normalizer = fit_normalizer()
    first = prepare_tiles([path], normalizer, 32)
    cached = first.arrays[path]
    assert cached.is_relative_to(Path(os.environ["HISTOSYNTH_CACHE_DIR"]) / "stain")
    with monkeypatch.context() as patch:  # a second run reads the cache and decodes nothing
        patch.setattr(stain, "load_rgb", lambda *args, **kwargs: pytest.fail("decoded a cached tile"))
        assert prepare_tiles([path], normalizer, 32).arrays[path] == cached
    Image.fromarray(sheet_crop(20, 56)).save(path)  # new content, new key
    os.utime(path, ns=(1, 1))
    changed = prepare_tiles([path], normalizer, 32).arrays[path]
    assert changed != cached and not np.array_equal(np.load(changed), np.load(cached))
    other = tmp_path / "other-reference.png"
    Image.fromarray(sheet_crop(30)).save(other)
    assert prepare_tiles([path], fit_normalizer(other), 32).arrays[path].parent != changed.parent
    assert prepare_tiles([path], None, 32).arrays[path].parent.name.endswith("resize-only-32")
