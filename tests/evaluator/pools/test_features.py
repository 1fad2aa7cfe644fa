"""Feature extraction: clean-fid's input pipeline, extractor loading and errors, cache keys and files."""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evaluator.pools.features import (
    INCEPTION_FILENAME,
    Extractor,
    ExtractorError,
    compute_features,
    features_cache_path,
    inception_weights_path,
    load_extractor,
    resolve_device,
)
from histosynth.errors import HistosynthError, ImageError


def pooled_statistics() -> Extractor:
    """Per-channel mean and standard deviation over 4x4 regions: 96 fixed features, no weights."""

    def model(batch: torch.Tensor) -> torch.Tensor:
        mean = torch.nn.functional.adaptive_avg_pool2d(batch, 4)
        square = torch.nn.functional.adaptive_avg_pool2d(batch**2, 4)
        return torch.cat([mean.flatten(1), (square - mean**2).clamp_min(0).sqrt().flatten(1)], dim=1)

    return Extractor(spec="stats", identity="pooled-statistics-v1", model=model, device=torch.device("cpu"))


@pytest.fixture
def tiles(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    folder = tmp_path / "tiles"
    folder.mkdir()
    paths = []
    for index in range(7):
        path = folder / f"tile-{index}.png"
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_clean_mode_feeds_exactly_what_clean_fid_feeds(tiles: list[Path]) -> None:
    from cleanfid.utils import ResizeDataset

    seen: list[torch.Tensor] = []

    def spy(batch: torch.Tensor) -> torch.Tensor:
        seen.append(batch.clone())
        return batch.mean(dim=(2, 3))

    extractor = Extractor(spec="spy", identity="spy", model=spy, device=torch.device("cpu"))
    compute_features(tiles, extractor, batch_size=4, cache=False)
    ours = torch.cat(seen)
    dataset = ResizeDataset([str(p) for p in tiles], mode="clean")
    theirs = torch.stack([dataset[i] for i in range(len(dataset))])
    assert ours.shape == (7, 3, 299, 299) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_workers_and_batch_size_do_not_change_features(tiles: list[Path]) -> None:
    extractor = pooled_statistics()
    serial = compute_features(tiles, extractor, batch_size=7, cache=False)
    threaded = compute_features(tiles, extractor, batch_size=2, workers=2, cache=False)
    assert serial.shape == (7, 96) and serial.dtype == np.float32
    np.testing.assert_array_equal(serial, threaded)


def test_cache_is_written_once_atomically_and_reused(tiles: list[Path], isolated_cache: Path) -> None:
    extractor = pooled_statistics()
    first = compute_features(tiles, extractor)
    entries = list((isolated_cache / "features").iterdir())
    assert [p.suffix for p in entries] == [".npy"]
    assert entries[0] == features_cache_path(tiles, extractor, "clean")
    calls = []
    counting = Extractor(
        "stats", extractor.identity, lambda b: calls.append(1) or extractor.model(b), extractor.device
    )
    np.testing.assert_array_equal(compute_features(tiles, counting), first)
    assert calls == []
    # A truncated entry (e.g. a disk filled up elsewhere) is recomputed and rewritten, not trusted.
    entries[0].write_bytes(entries[0].read_bytes()[:100])
    np.testing.assert_array_equal(compute_features(tiles, counting), first)
    assert len(calls) == 1 and np.load(entries[0]).shape == (7, 96)
    # Mode, extractor identity and the file list are all part of the key.
    assert features_cache_path(tiles, extractor, "native") != entries[0]
    other = Extractor("stats", "pooled-statistics-v2", extractor.model, extractor.device)
    assert features_cache_path(tiles, other, "clean") != entries[0]
    assert features_cache_path(tiles[:-1], extractor, "clean") != entries[0]


def test_folders_with_equal_names_sizes_and_mtimes_do_not_share_cached_features(tmp_path: Path) -> None:
    # Uncompressed TIFF tiles of one size all have one file size; copies may keep their mtimes.
    rng = np.random.default_rng(1)
    folders = {"original": tmp_path / "original", "normalised": tmp_path / "normalised"}
    for folder in folders.values():
        folder.mkdir()
        for index in range(3):
            path = folder / f"tile-{index}.tif"
            Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path)
            os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    files = {name: sorted(folder.iterdir()) for name, folder in folders.items()}
    original, normalised = files["original"], files["normalised"]
    stats = [(p.stat().st_size, p.stat().st_mtime_ns) for p in original]
    assert [(p.stat().st_size, p.stat().st_mtime_ns) for p in normalised] == stats
    extractor = pooled_statistics()
    first = compute_features(original, extractor)
    second = compute_features(normalised, extractor)
    np.testing.assert_array_equal(second, compute_features(normalised, extractor, cache=False))
    assert not np.array_equal(first, second)


def test_native_mode_keeps_pixels_and_names_a_mismatched_file(tiles: list[Path], tmp_path: Path) -> None:
    features = compute_features(tiles, pooled_statistics(), mode="native", cache=False)
    first = np.asarray(Image.open(tiles[0]), dtype=np.float64)
    np.testing.assert_allclose(features[0, [0, 16, 32]], first[:10, :14].mean(axis=(0, 1)), rtol=1e-5)
    odd = tmp_path / "tiles" / "tile-odd.png"
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(odd)
    with pytest.raises(ImageError, match="tile-odd.png: 30x30 px"):
        compute_features([*tiles, odd], pooled_statistics(), mode="native", cache=False)
    with pytest.raises(HistosynthError, match="--mode"):
        compute_features(tiles, pooled_statistics(), mode="legacy", cache=False)


def test_missing_inception_weights_name_the_file_and_where_to_put_it(
    isolated_cache: Path, tmp_path: Path
) -> None:
    with pytest.raises(ExtractorError) as default:
        load_extractor("inception", device="cpu")
    message = str(default.value)
    assert INCEPTION_FILENAME in message and str(isolated_cache / "weights" / INCEPTION_FILENAME) in message
    assert "--inception-weights" in message and "\n" not in message
    with pytest.raises(ExtractorError, match=re.escape(f"{tmp_path / 'nowhere.pt'}: Inception weights")):
        inception_weights_path(tmp_path / "nowhere.pt")
    (tmp_path / "weights").mkdir()
    with pytest.raises(ExtractorError, match=re.escape(str(tmp_path / "weights" / INCEPTION_FILENAME))):
        inception_weights_path(tmp_path / "weights")
    renamed = tmp_path / "inception.pt"
    renamed.write_bytes(b"")
    with pytest.raises(ExtractorError, match=f"must be named {INCEPTION_FILENAME}"):
        inception_weights_path(renamed)


class _FakeInceptionLayers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.proj = torch.nn.Conv2d(3, 2048, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(x))


class _FakeInception(torch.nn.Module):
    """Has the `layers` attribute clean-fid's InceptionV3W wrapper calls."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = _FakeInceptionLayers()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def test_inception_loads_a_local_torchscript_file_through_clean_fids_wrapper(
    isolated_cache: Path, tiles: list[Path]
) -> None:
    weights = isolated_cache / "weights" / INCEPTION_FILENAME
    weights.parent.mkdir(parents=True)
    torch.manual_seed(0)
    fake = _FakeInception()
    with warnings.catch_warnings():  # torch deprecates TorchScript; clean-fid's weights are TorchScript
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(fake).save(str(weights))
    extractor = load_extractor("inception", device="cpu")  # found in the documented cache location
    assert INCEPTION_FILENAME in extractor.identity
    features = compute_features(tiles, extractor, cache=False)
    assert features.shape == (7, 2048)
    batch = torch.full((1, 3, 299, 299), 192.0)  # the wrapper maps [0, 255] to [-1, 1]: 192 -> 0.5
    with torch.no_grad():
        expected = fake.layers(torch.full((1, 3, 299, 299), 0.5)).flatten(1)
        np.testing.assert_allclose(extractor.model(batch).numpy(), expected.numpy(), rtol=1e-5)
    with pytest.raises(ExtractorError, match="native"):
        compute_features(tiles, extractor, mode="native")


def test_inception_cache_key_hashes_the_weights_bytes(isolated_cache: Path) -> None:
    weights = isolated_cache / "weights" / INCEPTION_FILENAME
    weights.parent.mkdir(parents=True)
    identities, sizes = [], []
    for seed in (0, 1):  # same architecture, other values: a TorchScript file of the same size
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.script(_FakeInception()).save(str(weights))
        os.utime(weights, ns=(seed, seed))  # a distinct mtime whatever the file system's resolution
        sizes.append(weights.stat().st_size)
        identities.append(load_extractor("inception", device="cpu").identity)
        assert hashlib.sha256(weights.read_bytes()).hexdigest() in identities[-1]
    assert sizes[0] == sizes[1]
    assert identities[0] != identities[1]


def test_bad_extractor_specs_and_outputs_raise_extractor_errors(tiles: list[Path]) -> None:
    with pytest.raises(ExtractorError, match="module:callable"):
        load_extractor("just-a-name", device="cpu")
    with pytest.raises(ExtractorError, match="cannot import"):
        load_extractor("no_such_module_here:build", device="cpu")
    with pytest.raises(ExtractorError, match="not callable"):
        load_extractor("math:pi", device="cpu")
    flat = Extractor("flat", "flat", lambda batch: batch.mean(dim=(1, 2, 3)), torch.device("cpu"))
    with pytest.raises(ExtractorError, match=r"shape \(4,\)"):
        compute_features(tiles, flat, batch_size=4, cache=False)


def test_resolve_device() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(HistosynthError, match="--device"):
        resolve_device("gpu-please")
