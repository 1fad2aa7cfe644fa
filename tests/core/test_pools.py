"""The pool format: NCT-CRC-HE-100K's layout, checked by name, with pool.json for generated pools."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from histosynth.errors import PoolError
from histosynth.pools import list_classes, read_manifest, read_pool, sha256_file, write_manifest


def test_reads_classes_and_sorted_files(make_pool) -> None:
    root = make_pool("real", classes=("TUM", "ADI"), per_class=3, suffix=".tif")
    (root / ".hidden").mkdir()
    (root / "ADI" / ".DS_Store").write_bytes(b"x")
    pool = read_pool(root)
    assert pool.classes == ["ADI", "TUM"] == list_classes(root)
    assert [p.name for p in pool.files["ADI"]] == sorted(p.name for p in pool.files["ADI"])
    assert len(pool) == 6


def test_subset_of_classes(make_pool) -> None:
    root = make_pool("real", classes=("ADI", "BACK", "TUM"))
    assert read_pool(root, ["TUM", "ADI"]).classes == ["TUM", "ADI"]


def test_missing_class_is_named(make_pool) -> None:
    root = make_pool("gen", classes=("ADI",))
    with pytest.raises(PoolError, match="no folder for class TUM"):
        read_pool(root, ["ADI", "TUM"])


def test_empty_class_and_stray_file_are_named(make_pool) -> None:
    root = make_pool("gen", classes=("ADI",))
    (root / "TUM").mkdir()
    with pytest.raises(PoolError, match="TUM: class folder holds no images"):
        read_pool(root)
    (root / "TUM" / "readme.txt").write_text("x")
    with pytest.raises(PoolError, match="readme.txt: not an image"):
        read_pool(root)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(PoolError, match="does not exist"):
        read_pool(tmp_path / "nowhere")
    (tmp_path / "flat").mkdir()
    with pytest.raises(PoolError, match="no class folders"):
        read_pool(tmp_path / "flat")


def test_manifest_records_hashes(make_pool) -> None:
    root = make_pool("gen", per_class=2)
    write_manifest(root, generator="KLF8-DM", checkpoint="ckpt/last", sampler="DDIM", steps=200, seed=3)
    manifest = read_manifest(root)
    assert manifest["generator"] == "KLF8-DM" and manifest["steps"] == 200
    assert manifest["classes"] == ["ADI", "TUM"]
    first = sorted(manifest["files"])[0]
    assert manifest["files"][first] == sha256_file(root / first)
    assert len(manifest["files"]) == 4
    # pool.json itself is not a class folder and does not break reading the pool.
    assert read_pool(root).classes == ["ADI", "TUM"]


def test_bad_manifest(make_pool) -> None:
    root = make_pool("gen")
    (root / "pool.json").write_text("{not json")
    with pytest.raises(PoolError, match="pool.json: not valid JSON"):
        read_manifest(root)
    (root / "pool.json").write_text(json.dumps([1]))
    with pytest.raises(PoolError, match="expected a JSON object"):
        read_manifest(root)


def test_nested_folder_is_named(make_pool) -> None:
    root = make_pool("real")
    (root / "ADI" / "more").mkdir()
    with pytest.raises(PoolError, match="more: folder inside a class folder"):
        read_pool(root)
