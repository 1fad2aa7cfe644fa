"""The memorization cache: where it lives, when it is reused, and that a crash leaves no half entry."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import evaluator.memorization.cache as cache
from histosynth.errors import HistosynthError, ImageError


def make_class(folder: Path, count: int, side: int = 16, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"t{index:02d}.png"
        Image.fromarray((rng.random((side, side, 3)) * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def entries(root: Path) -> list[str]:
    return (
        sorted(p.name for p in (root / "memorization").iterdir()) if (root / "memorization").exists() else []
    )


def test_cache_root_is_the_shared_cache_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HISTOSYNTH_CACHE_DIR", str(tmp_path / "explicit"))
    assert cache.cache_root() == tmp_path / "explicit" / "memorization"
    assert cache.cache_root(tmp_path / "arg") == tmp_path / "arg" / "memorization"
    monkeypatch.delenv("HISTOSYNTH_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root() == tmp_path / "xdg" / "histosynth" / "memorization"


def test_matrix_holds_pil_luma_and_exact_statistics(tmp_path: Path) -> None:
    paths = make_class(tmp_path / "train" / "A", 5)
    matrix = cache.load_class_matrix("A", tmp_path / "train" / "A", paths, None, cache_dir=tmp_path / "c")
    expected = np.stack([np.asarray(Image.open(p).convert("L")).ravel() for p in paths])
    assert np.array_equal(matrix.pixels, expected)
    centred = expected - expected.mean(axis=1, keepdims=True)
    assert np.allclose(matrix.mean, expected.mean(axis=1))
    assert np.allclose(matrix.norm, np.linalg.norm(centred, axis=1))
    assert isinstance(matrix.pixels, np.memmap)
    assert matrix.shape == (16, 16)


def test_second_load_reuses_the_cache_without_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "train" / "A"
    paths = make_class(folder, 4)
    first = cache.load_class_matrix("A", folder, paths, 24, cache_dir=tmp_path / "c")
    assert len(entries(tmp_path / "c")) == 3  # pixels, statistics, metadata; no temporary files

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded although the cache is warm")

    monkeypatch.setattr(cache, "load_gray", no_decoding)
    again = cache.load_class_matrix("A", folder, paths, 24, cache_dir=tmp_path / "c")
    assert np.array_equal(first.pixels, again.pixels) and first.pixels.shape == (4, 24 * 24)
    with pytest.raises(AssertionError, match="decoded"):  # another size is another entry
        cache.load_class_matrix("A", folder, paths, 20, cache_dir=tmp_path / "c")


def test_a_changed_training_tile_rebuilds_the_entry(tmp_path: Path) -> None:
    folder = tmp_path / "train" / "A"
    paths = make_class(folder, 3)
    before = np.array(cache.load_class_matrix("A", folder, paths, None, cache_dir=tmp_path / "c").pixels)
    Image.fromarray(np.full((16, 16, 3), 9, np.uint8)).save(paths[1])
    os.utime(paths[1], ns=(1, 1))  # a different mtime even on coarse file systems
    after = cache.load_class_matrix("A", folder, paths, None, cache_dir=tmp_path / "c")
    assert np.array_equal(after.pixels[0], before[0]) and (after.pixels[1] == 9).all()
    assert len(entries(tmp_path / "c")) == 3  # the superseded entry is gone


def test_a_rebuilt_entry_removes_only_the_entry_it_supersedes(tmp_path: Path) -> None:
    """Same folder, class and size: the older entry goes; another size or another class keeps its own."""
    root = tmp_path / "c" / "memorization"
    folder, other_folder = tmp_path / "train" / "A", tmp_path / "train" / "B"
    paths, other_paths = make_class(folder, 3), make_class(other_folder, 2, seed=1)

    def build(name: str, where: Path, tiles: list[Path], size: int | None) -> set[str]:
        cache.load_class_matrix(name, where, tiles, size, cache_dir=tmp_path / "c")
        return {p.stem for p in root.glob("*.json")}

    old = build("A", folder, paths, None)
    others = (build("B", other_folder, other_paths, None) | build("A", folder, paths, 20)) - old
    assert len(old) == 1 and len(others) == 2
    os.utime(paths[0], ns=(5, 5))
    after = build("A", folder, paths, None)
    assert old.isdisjoint(after) and others < after and len(after) == 3
    assert len(entries(tmp_path / "c")) == 3 * 3  # no pixels or statistics of the old entry left
    (root / "notes.json").write_text("{not json")  # foreign or broken files are left alone
    os.utime(paths[0], ns=(6, 6))
    build("A", folder, paths, None)
    assert (root / "notes.json").exists() and len(entries(tmp_path / "c")) == 3 * 3 + 1


def test_an_interrupted_build_leaves_no_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "train" / "A"
    paths = make_class(folder, 3)
    real_row_stats = cache.row_stats

    def interrupted(pixels: np.ndarray) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cache, "row_stats", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache.load_class_matrix("A", folder, paths, None, cache_dir=tmp_path / "c")
    assert entries(tmp_path / "c") == []
    monkeypatch.setattr(cache, "row_stats", real_row_stats)
    matrix = cache.load_class_matrix("A", folder, paths, None, cache_dir=tmp_path / "c")
    assert matrix.pixels.shape == (3, 256)


def test_a_truncated_entry_is_rebuilt(tmp_path: Path) -> None:
    folder = tmp_path / "train" / "A"
    paths = make_class(folder, 3)
    cache.load_class_matrix("A", folder, paths, None, cache_dir=tmp_path / "c")
    pixels = next((tmp_path / "c" / "memorization").glob("*[0-9a-f].npy"))
    pixels.write_bytes(pixels.read_bytes()[:100])
    matrix = cache.load_class_matrix("A", folder, paths, None, cache_dir=tmp_path / "c")
    assert matrix.pixels.shape == (3, 256)


def test_undecodable_and_mismatched_tiles_name_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "train" / "A"
    paths = make_class(folder, 2)
    broken = folder / "t99.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ImageError, match="t99.png"):
        cache.load_class_matrix("A", folder, [*paths, broken], None, cache_dir=tmp_path / "c")
    assert entries(tmp_path / "c") == []
    bigger = make_class(tmp_path / "other", 1, side=20)[0]
    with pytest.raises(HistosynthError, match=f"{bigger}: tile is 20x20 px but .*t00.png is 16x16 px"):
        cache.load_gray_stack([*paths, bigger], None)
    with pytest.raises(HistosynthError, match="no tiles"):
        cache.load_gray_stack([], None)


def test_unwritable_cache_and_empty_class_are_clear_errors(tmp_path: Path) -> None:
    folder = tmp_path / "train" / "A"
    paths = make_class(folder, 2)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(HistosynthError, match="cannot create the cache folder"):
        cache.load_class_matrix("A", folder, paths, None, cache_dir=blocker)
    with pytest.raises(HistosynthError, match="no training tiles"):
        cache.load_class_matrix("A", folder, [], None, cache_dir=tmp_path / "c")
