"""`histosynth reproduce` runs the paper's workflow for real (Snakemake, the histosynth commands).

One tiny run is shared by the tests of a module: two generators on a three-class pool, every
train command capped at 2 steps (plumbing: whether the tiny presets learn is measured elsewhere).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histosynth.workflow.step import fingerprint
from tests.conftest import histosynth, histosynth_process

TINY_EXTRACTOR = """
import torch


def build():
    torch.manual_seed(0)
    layers = [torch.nn.Conv2d(3, 8, 7, stride=4), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten()]
    return torch.nn.Sequential(*layers)
"""
COLOURS = {"ADI": (230, 200, 210), "STR": (200, 120, 150), "TUM": (120, 60, 140)}


def write_pool(folder: Path, per_class: int, seed: int, classes=COLOURS) -> Path:
    rng = np.random.default_rng(seed)
    for name in classes:
        (folder / name).mkdir(parents=True)
        for index in range(per_class):
            tile = np.clip(np.array(COLOURS[name]) + rng.normal(0, 20, (32, 32, 3)), 0, 255)
            Image.fromarray(tile.astype(np.uint8)).save(folder / name / f"{name}-{index}.png")
    return folder


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reproduce")
    write_pool(root / "data", 8, seed=0)
    write_pool(root / "test", 4, seed=1)
    (root / "tiny_extractor.py").write_text(TINY_EXTRACTOR)
    return root


@pytest.fixture(scope="module")
def environment(workspace: Path):
    saved = dict(os.environ)
    os.environ.update(PYTHONPATH=str(workspace), HISTOSYNTH_CACHE_DIR=str(workspace / "cache"))
    yield
    os.environ.clear()
    os.environ.update(saved)


def arguments(out: str = "run") -> list[str]:
    return [
        *("reproduce", "--data", "data", "--test", "test", "--out", out),
        *("--generators", "klf8,stylegan2", "--max-steps", "2", "--per-class", "4", "--seeds", "1"),
        *("--extractor", "tiny_extractor:build", "--cores", "2", "--no-progress"),
    ]


def test_a_tiny_run_makes_every_output_once_and_reruns_only_what_a_deleted_pool_feeds(
    workspace: Path, environment
) -> None:
    dry = histosynth_process(*arguments("fresh"), "--dry-run", cwd=workspace)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert not (workspace / "fresh").exists()  # a dry run writes nothing

    first = histosynth_process(*arguments(), cwd=workspace, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    run = workspace / "run"
    for made in (
        "models/autoencoder-kl/histosynth.json",
        "models/klf8/histosynth.json",
        "models/stylegan2/histosynth.json",
        "pools/klf8/pool.json",
        "pools/stylegan2/pool.json",
        "results/fid/fid.csv",
        "results/tsne/tsne.csv",
        "results/msssim/kl/msssim.csv",
        "results/memorization/memorization.csv",
        "results/classifier/classifier_accuracy.csv",
        "study/study.toml",
    ):
        assert (run / made).is_file(), made
    fid = (run / "results/fid/fid.csv").read_text()
    assert "KLF8-DM" in fid and "styleGAN2" in fid
    record = json.loads((run / ".provenance/pool-klf8.json").read_text())
    assert record["command"].endswith(
        "generate --model models/klf8 --out pools/klf8 --per-class 4 --name KLF8-DM --no-progress"
    )
    assert list(record["inputs"]) == ["models/klf8/histosynth.json"]
    assert len(record["outputs"]) == 3 * 4 + 1  # 4 images per class and pool.json
    check_provenance(run)
    report = (run / "REPORT.md").read_text()
    fid_row = next(line for line in fid.splitlines() if line.startswith("ADI,KLF8-DM,"))
    assert f"| KLF8-DM | {float(fid_row.split(',')[2]):.1f} |" in report  # this run's FID ...
    assert "| KLF8-DM (paper) | 73.2 | 12.4 | 10.3 |" in report  # ... beside Table 2's ADI, STR, TUM
    assert "| synthetic (paper) | 0.99 | 0.57 | 0.95 | 0.80 |" in report
    assert "91.6 ± 5.3" in report and "study/study.toml" in report

    again = histosynth_process(*arguments(), cwd=workspace)
    assert again.returncode == 0 and "Nothing to be done" in again.stderr, again.stderr[-2000:]

    # one generated pool deleted and a tile added to the test pool, in one rerun (suite time):
    # the deleted pool and what reads it or the test pool run again, the models and the other pool not
    models = {path: path.stat().st_mtime_ns for path in run.glob("models/*/histosynth.json")}
    kept = (run / "pools/klf8/pool.json").stat().st_mtime_ns
    memorized = (run / "results/memorization/memorization.csv").stat().st_mtime_ns
    shutil.rmtree(run / "pools/stylegan2")
    write_pool(workspace / "more", 1, seed=3)
    shutil.move(workspace / "more" / "ADI" / "ADI-0.png", workspace / "test" / "ADI" / "ADI-extra.png")
    planned = histosynth_process(*arguments(), "--dry-run", cwd=workspace)
    assert "pool" in planned.stdout + planned.stderr and not (run / "pools/stylegan2").exists()
    redone = histosynth_process(*arguments(), cwd=workspace, timeout=600)
    assert redone.returncode == 0, redone.stderr[-3000:]
    assert (run / "pools/stylegan2/pool.json").is_file()
    assert {path: path.stat().st_mtime_ns for path in run.glob("models/*/histosynth.json")} == models
    assert (run / "pools/klf8/pool.json").stat().st_mtime_ns == kept
    assert (run / "results/memorization/memorization.csv").stat().st_mtime_ns > memorized
    tested = json.loads((run / ".provenance/classifier.json").read_text())["inputs"]
    assert tested[str(workspace / "test")] == fingerprint(workspace / "test")  # the new test pool
    check_provenance(run)  # the report was made again, with the new records


def check_provenance(run: Path) -> None:
    """reproduce.json holds every step's record, and its hashes are those of the files on disk."""
    provenance = json.loads((run / "reproduce.json").read_text())
    assert provenance["histosynth_version"] and provenance["config"]["generators"] == ["klf8", "stylegan2"]
    assert provenance["command"].startswith("histosynth reproduce --data data --test test --out run ")
    assert set(provenance["steps"]) == {
        *("autoencoder-kl", "klf8", "stylegan2", "pool-klf8", "pool-stylegan2", "fid", "tsne"),
        *("msssim-kl", "memorization", "classifier"),
    }
    for step in provenance["steps"].values():
        for name, digest in step["outputs"].items():
            assert hashlib.sha256((run / name).read_bytes()).hexdigest() == digest, name
    fid_inputs = provenance["steps"]["fid"]["inputs"]
    assert (
        fid_inputs["pools/klf8/pool.json"]
        == "sha256:" + hashlib.sha256((run / "pools/klf8/pool.json").read_bytes()).hexdigest()
    )


def test_bad_input_gets_one_line_before_anything_runs(workspace: Path, tmp_path: Path) -> None:
    other = write_pool(tmp_path / "other", 2, seed=2, classes=("ADI", "TUM"))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "reproduce.config.json").write_text(json.dumps({"preset": "paper"}))
    base = ["reproduce", "--data", workspace / "data", "--test", workspace / "test"]
    cases = [
        (["reproduce", "--data", tmp_path / "nowhere", "--test", workspace / "test"], "nowhere"),
        (["reproduce", "--data", workspace / "data", "--test", other], "classes ADI, TUM differ"),
        ([*base, "--generators", "klf8,gan"], "--generators 'klf8,gan': expected some of"),
        ([*base, "--generators", "sd"], "--generators sd: fine-tuning Stable Diffusion needs --sd-base"),
        ([*base, "--preset", "huge"], "--preset 'huge'"),
    ]
    for args, message in cases:
        result = histosynth(*args, "--out", tmp_path / "new")
        assert result.returncode == 1 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) <= 2  # the sd note and the error
        assert not (tmp_path / "new").exists()
    taken = histosynth(*base, "--generators", "klf8", "--out", tmp_path / "taken")
    assert taken.returncode == 1 and "holds another run (data, test, preset" in taken.stderr, taken.stderr


def test_a_pools_fingerprint_tells_a_tile_edited_in_place_at_the_same_size(tmp_path: Path) -> None:
    pool = write_pool(tmp_path / "pool", 2, seed=4)
    tile = pool / "ADI" / "ADI-0.png"
    before, size = fingerprint(pool), tile.stat().st_size
    assert fingerprint(pool) == before  # the same pool, the same fingerprint
    data = bytearray(tile.read_bytes())
    data[-20] ^= 0xFF  # one byte changed: the size stays
    tile.write_bytes(bytes(data))
    # an edit made later than the first write (a coarse file-system clock could give both one time)
    os.utime(tile, ns=(tile.stat().st_atime_ns, tile.stat().st_mtime_ns + 1_000_000))
    assert tile.stat().st_size == size and fingerprint(pool) != before
