"""`generate`: pools that the evaluator and the rating app take, images independent of batch size,
a killed run that resumes into the same complete pool, intermediates, and refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histosynth.errors import HistosynthError
from histosynth.pools import read_manifest, read_pool, sha256_file
from trainer.generate import MARKER, generate_pool

TINY_EXTRACTOR = """
import torch


def build():
    torch.manual_seed(0)
    layers = [torch.nn.Conv2d(3, 8, 7, stride=4), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten()]
    return torch.nn.Sequential(*layers)
"""


def files_and_bytes(pool: Path) -> dict[str, bytes]:
    return {p.relative_to(pool).as_posix(): p.read_bytes() for p in sorted(pool.glob("*/*.png"))}


def test_images_do_not_depend_on_batch_size_but_on_the_seed(tiny_models, tmp_path: Path) -> None:
    common = dict(per_class=3, steps=5, eta=0.5, guidance=1.5)
    one = generate_pool(tiny_models.ldm, tmp_path / "b1", batch_size=1, **common)
    three = generate_pool(tiny_models.ldm, tmp_path / "b3", batch_size=3, **common)
    first = files_and_bytes(one)
    assert list(first) == [f"{c}/{i:06d}.png" for c in ("ADI", "TUM") for i in range(3)]
    assert first == files_and_bytes(three)
    other = generate_pool(tiny_models.ldm, tmp_path / "seed1", batch_size=3, seed=1, **common)
    assert files_and_bytes(other)["ADI/000000.png"] != first["ADI/000000.png"]
    assert len(set(first.values())) == 6  # every (class, index) its own noise

    manifest = read_manifest(one)
    assert manifest["generator"] == "ldm" and manifest["sampler"] == "ddim" and manifest["steps"] == 5
    assert (manifest["eta"], manifest["guidance"], manifest["seed"]) == (0.5, 1.5, 0)
    assert len(manifest["checkpoint"]) == 64
    assert manifest["files"] == {name: sha256_file(one / name) for name in first}
    assert not (one / MARKER).exists()
    with Image.open(one / "ADI" / "000000.png") as image:
        assert image.size == (32, 32) and image.mode == "RGB"


def test_every_u_net_pass_of_a_run_has_one_shape(
    tiny_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch rounded up to a multiple of PAD_TO, the last batch padded to it: one shape per
    run, so that compiled kernels (and CUDA graphs) serve every pass."""
    from diffusers import UNet2DConditionModel

    shapes: list[int] = []
    forward = UNet2DConditionModel.forward

    def recorded(self, sample, *args, **kwargs):
        shapes.append(sample.shape[0])
        return forward(self, sample, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", recorded)
    generate_pool(tiny_models.ldm, tmp_path / "b10", per_class=7, steps=2, batch_size=10)  # 14: 10 + 4
    assert shapes == [16] * 4  # two batches of two steps, each on 16 rows
    shapes.clear()
    generate_pool(tiny_models.ldm, tmp_path / "default", per_class=1, steps=2)
    assert shapes == [16] * 2  # the CPU's default batch of 16, padded


def test_a_generated_pool_feeds_evaluate_fid_and_study_create(
    tiny_models, tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = generate_pool(tiny_models.ldm, tmp_path / "klf8", per_class=4, steps=5, name="KLF8-DM")
    (tmp_path / "tiny_extractor.py").write_text(TINY_EXTRACTOR)
    monkeypatch.syspath_prepend(tmp_path)  # as PYTHONPATH=tmp_path does for the installed script
    fid = cli(
        "evaluate",
        "fid",
        "--reference",
        tiny_models.pool,
        "--pool",
        f"KLF8-DM={pool}",
        "--out",
        tmp_path / "fid",
        "--extractor",
        "tiny_extractor:build",
        "--kid-subset-size",
        "2",
        "--kid-subsets",
        "3",
        "--bootstrap",
        "0",
        "--workers",
        "0",
    )
    assert fid.returncode == 0, fid.stderr
    assert "KLF8-DM" in (tmp_path / "fid" / "fid.csv").read_text()

    study = tmp_path / "study.toml"
    study.write_text(
        '[study]\nname = "pilot"\nseed = 1\nimages_per_cell = 2\n\n'
        f'[sources]\nreal = "{tiny_models.pool.as_posix()}"\n"KLF8-DM" = "{pool.as_posix()}"\n'
    )
    created = cli("study", "create", study, "--db", tmp_path / "study.db")
    assert created.returncode == 0, created.stderr


def test_a_killed_generate_resumes_into_the_same_complete_pool(tiny_models, tmp_path: Path) -> None:
    args = ["--model", str(tiny_models.ldm), "--per-class", "4", "--steps", "8", "--batch-size", "1"]
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "histosynth", "generate", *args, "--out", str(killed)]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while len(list(killed.glob("*/*.png"))) < 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    written = len(list(killed.glob("*/*.png")))
    assert 2 <= written < 8, "the run must be killed part-way"
    assert (killed / MARKER).exists() and not (killed / "pool.json").exists()

    resumed = subprocess.run([*command], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    clean = generate_pool(tiny_models.ldm, tmp_path / "clean", per_class=4, steps=8, batch_size=8)
    assert files_and_bytes(killed) == files_and_bytes(clean)  # nothing missing, duplicated or half-written
    assert not list(killed.rglob("*.tmp")) and not (killed / MARKER).exists()
    assert len(read_manifest(killed)["files"]) == 8


def test_save_intermediates_writes_rows_outside_the_pool(tiny_models, tmp_path: Path) -> None:
    rows = tmp_path / "fig5b"
    pool = generate_pool(
        tiny_models.ldm,
        tmp_path / "pool",
        per_class=1,
        steps=10,
        save_intermediates=rows,
        intermediate_steps=5,
    )
    with Image.open(rows / "TUM" / "000000.png") as row:
        assert row.size == (5 * 32, 32)
    final = np.asarray(Image.open(pool / "TUM" / "000000.png"), dtype=float)
    last = np.asarray(Image.open(rows / "TUM" / "000000.png"), dtype=float)[:, 4 * 32 :]
    assert np.abs(final - last).mean() < 2  # the last x0 prediction is (nearly: alpha_bar[0] < 1) the image
    assert sorted(read_pool(pool).classes) == ["ADI", "TUM"] and not list(pool.rglob("fig5b"))


def test_refusals_are_one_line_and_write_nothing(tiny_models, tmp_path: Path, cli) -> None:
    out = tmp_path / "pool"
    cases = [
        (["--model", tiny_models.ldm, "--per-class", "0"], "--per-class 0: must be at least 1"),
        (["--model", tiny_models.autoencoder, "--per-class", "1"], "of kind kl-autoencoder, expected ldm"),
    ]
    for args, message in cases:
        result = cli("generate", *args, "--out", out)
        assert result.returncode == 1 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert not out.exists()
    with pytest.raises(HistosynthError, match="histosynth.json: missing"):
        generate_pool(tmp_path, out, per_class=1)
    with pytest.raises(HistosynthError, match="--classes LYM: not a class"):
        generate_pool(tiny_models.ldm, out, per_class=1, classes=["LYM"])
    assert not out.exists()

    generate_pool(tiny_models.ldm, out, per_class=1, steps=3)
    with pytest.raises(HistosynthError, match="holds another pool \\(steps, seed differ"):
        generate_pool(tiny_models.ldm, out, per_class=1, steps=4, seed=5)
    with pytest.raises(HistosynthError, match="precision differ from this run: precision='fp32'"):
        generate_pool(tiny_models.ldm, out, per_class=1, steps=3, precision="bf16")  # other images
    more = generate_pool(tiny_models.ldm, out, per_class=2, steps=3)  # same pool: extended, not refused
    assert len(read_manifest(more)["files"]) == 4
    assert read_manifest(more)["precision"] == "fp32"
    stranger = tmp_path / "stranger"
    (stranger / "ADI").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(stranger / "ADI" / "x.png")
    with pytest.raises(HistosynthError, match="did not write"):
        generate_pool(tiny_models.ldm, stranger, per_class=1, steps=3)


def test_guidance_needs_a_trained_null_class(tiny_models, tmp_path: Path) -> None:
    info_path = tiny_models.ldm / "histosynth.json"
    copy = tmp_path / "no-null"
    copy.mkdir()
    for part in ("unet", "class_embedder", "vae", "scheduler"):
        (copy / part).symlink_to(tiny_models.ldm / part)
    info = json.loads(info_path.read_text())
    info["settings"]["cond_drop"] = 0.0
    (copy / "histosynth.json").write_text(json.dumps(info))
    with pytest.raises(HistosynthError, match="cond_drop 0"):
        generate_pool(copy, tmp_path / "pool", per_class=1, guidance=3.0)
