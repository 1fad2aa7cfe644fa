"""t-SNE per class: table and figures on tiny pools, separation of distinct sources, shared feature cache."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from evaluator.pools.features import Extractor
from evaluator.pools.fid import FidSettings, compute_fid
from evaluator.pools.report import write_outputs
from evaluator.pools.tsne import TsneResult, TsneSettings, compute_tsne, embed, evaluate_tsne
from histosynth.errors import HistosynthError
from histosynth.sampling import sample_files

from .conftest import brightness_pool


class ColourStatistics:
    """Counts images; features are per-channel means and standard deviations over 2x2 regions."""

    def __init__(self) -> None:
        self.images = 0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.images += len(batch)
        mean = torch.nn.functional.adaptive_avg_pool2d(batch, 2)
        square = torch.nn.functional.adaptive_avg_pool2d(batch**2, 2)
        return torch.cat([mean.flatten(1), (square - mean**2).clamp_min(0).sqrt().flatten(1)], dim=1)


@pytest.fixture
def extractor() -> Extractor:
    return Extractor("colour", "colour-statistics-v1", ColourStatistics(), torch.device("cpu"))


@pytest.fixture
def pools(tmp_path: Path) -> dict[str, Path]:
    return {
        "reference": brightness_pool(
            tmp_path / "reference", {"ADI": 210, "STR": 120}, 14, seed=1, side=24, spread=25
        ),
        "faded": brightness_pool(tmp_path / "faded", {"ADI": 120, "STR": 40}, 9, seed=2, side=24, spread=25),
    }


def test_tsne_writes_table_and_figures_and_separates_distinct_sources(
    pools: dict[str, Path], extractor: Extractor, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    table = evaluate_tsne(
        pools["reference"], {"faded": pools["faded"]}, out, TsneSettings(extractor=extractor, per_source=10)
    ).table
    assert list(table.columns) == ["class", "source", "file", "x", "y"]
    counts = table.groupby(["class", "source"]).size().to_dict()
    assert counts == {
        ("ADI", "faded"): 9,
        ("ADI", "reference"): 10,
        ("STR", "faded"): 9,
        ("STR", "reference"): 10,
    }
    assert np.isfinite(table[["x", "y"]].to_numpy()).all()
    for name, part in table.groupby("class"):
        points = part[["x", "y"]].to_numpy()
        distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
        np.fill_diagonal(distances, np.inf)
        neighbour_source = part["source"].to_numpy()[distances.argmin(axis=1)]
        assert (neighbour_source == part["source"].to_numpy()).mean() >= 0.9, name
    assert (out / "tsne.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "tsne.pdf").read_bytes().startswith(b"%PDF")
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "tsne.csv")[["class", "source"]], table[["class", "source"]]
    )


def test_tsne_reuses_the_features_fid_cached(pools: dict[str, Path], extractor: Extractor) -> None:
    compute_fid(
        pools["reference"],
        {"faded": pools["faded"]},
        FidSettings(extractor=extractor, kid_subsets=2, n_bootstrap=0),
    )
    seen = extractor.model.images
    assert seen == 2 * 14 + 2 * 9
    compute_tsne(pools["reference"], {"faded": pools["faded"]}, TsneSettings(extractor=extractor))
    assert extractor.model.images == seen


def drawn_files(result: TsneResult) -> dict[tuple[str, str], set[str]]:
    return {key: set(group["file"]) for key, group in result.table.groupby(["class", "source"])}


def test_subsets_follow_the_seeding_rule(
    pools: dict[str, Path], extractor: Extractor, tmp_path: Path
) -> None:
    """Same seed and pools: same tiles; adding a source or a class changes no other's tiles."""
    other = brightness_pool(tmp_path / "other", {"ADI": 60, "STR": 200}, 9, seed=3, side=24, spread=25)
    settings = TsneSettings(extractor=extractor, per_source=5)
    reference, faded = pools["reference"], pools["faded"]
    alone = drawn_files(compute_tsne(reference, {"faded": faded}, settings))
    assert {len(files) for files in alone.values()} == {5}
    assert drawn_files(compute_tsne(reference, {"faded": faded}, settings)) == alone
    with_other = drawn_files(compute_tsne(reference, {"faded": faded, "other": other}, settings))
    assert {key: files for key, files in with_other.items() if key[1] != "other"} == alone
    one_class = drawn_files(
        compute_tsne(reference, {"faded": faded}, dataclasses.replace(settings, classes=["STR"]))
    )
    assert one_class == {key: files for key, files in alone.items() if key[0] == "STR"}
    reseeded = drawn_files(compute_tsne(reference, {"faded": faded}, dataclasses.replace(settings, seed=1)))
    assert reseeded != alone
    # The scope is (source, class), as for every sampled pool: the core sampler's own draw.
    expected = sample_files(sorted((faded / "ADI").iterdir()), 5, 0, "faded", "ADI")
    assert alone[("ADI", "faded")] == {str(path) for path in expected}


def test_embed_lowers_perplexity_for_few_points_and_rejects_too_few() -> None:
    rng = np.random.default_rng(0)
    coordinates = embed(rng.normal(size=(6, 80)), perplexity=30, seed=0)
    assert coordinates.shape == (6, 2) and np.isfinite(coordinates).all()
    with pytest.raises(HistosynthError, match="at least 4"):
        embed(rng.normal(size=(3, 5)))


def test_a_failed_write_leaves_the_previous_outputs_together(
    pools: dict[str, Path], extractor: Extractor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    evaluate_tsne(
        pools["reference"], {"faded": pools["faded"]}, out, TsneSettings(extractor=extractor, per_source=6)
    )
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    write_bytes = Path.write_bytes

    def disk_full_on_pdf(path: Path, data: bytes) -> int:
        if path.name == "tsne.pdf":
            raise OSError(28, "No space left on device")
        return write_bytes(path, data)

    monkeypatch.setattr(Path, "write_bytes", disk_full_on_pdf)
    with pytest.raises(HistosynthError, match="No space left"):
        evaluate_tsne(
            pools["reference"], {"faded": pools["faded"]}, out, TsneSettings(extractor=extractor, seed=1)
        )
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cache", "faded", "out", "reference"]


def test_write_outputs_removes_the_owned_files_of_earlier_runs_only(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name in ("old.csv", "notes.txt"):
        (out / name).write_text("earlier")
    written = write_outputs(
        out, {"new.csv": "a\n", "new.png": b"\x89PNG"}, owned=("new.csv", "new.png", "old.csv")
    )
    assert written == [out / "new.csv", out / "new.png"]
    assert sorted(path.name for path in out.iterdir()) == ["new.csv", "new.png", "notes.txt"]
    assert (out / "new.png").read_bytes() == b"\x89PNG"


def test_tsne_rejects_bad_options(pools: dict[str, Path], extractor: Extractor, tmp_path: Path) -> None:
    with pytest.raises(HistosynthError, match="'reference' is taken"):
        evaluate_tsne(
            pools["reference"],
            {"reference": pools["faded"]},
            tmp_path / "o",
            TsneSettings(extractor=extractor),
        )
    assert extractor.model.images == 0  # refused before any feature was extracted
    with pytest.raises(HistosynthError, match="--per-source"):
        compute_tsne(
            pools["reference"], {"faded": pools["faded"]}, TsneSettings(extractor=extractor, per_source=1)
        )
    assert not (tmp_path / "o").exists()
