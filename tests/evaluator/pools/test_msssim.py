"""MS-SSIM of autoencoder reconstructions: tiny diffusers models saved to disk, independent recomputation."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from pytorch_msssim import ms_ssim

from evaluator.pools.msssim import MIN_SIDE, MsssimSettings, compute_msssim, evaluate_msssim, load_autoencoder
from histosynth.errors import HistosynthError, ImageError

SIDE = 168  # just above pytorch-msssim's 160 px floor for 5 scales


def smooth_tile(rng: np.random.Generator, side: int) -> np.ndarray:
    """Blurred noise: image-like structure at several scales, so MS-SSIM is informative."""
    coarse = rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((side, side), Image.Resampling.BICUBIC))


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for name, count in (("ADI", 3), ("TUM", 2)):
        (tmp_path / "data" / name).mkdir(parents=True)
        for index in range(count):
            Image.fromarray(smooth_tile(rng, SIDE)).save(tmp_path / "data" / name / f"{index}.png")
    return tmp_path / "data"


@pytest.fixture
def kl_folder(tmp_path: Path) -> Path:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    model = AutoencoderKL(
        block_out_channels=[4, 8],
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=2,
        layers_per_block=1,
    )
    model.save_pretrained(tmp_path / "kl")
    return tmp_path / "kl"


def test_msssim_matches_an_independent_recomputation(pool: Path, kl_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = evaluate_msssim(kl_folder, pool, out, MsssimSettings(size=None, batch_size=2, device="cpu"))
    summary, per_image = result.summary, result.per_image
    model = load_autoencoder(kl_folder, "cpu")
    expected = {}
    for path in sorted(pool.glob("*/*.png")):
        image = torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32) / 255).permute(2, 0, 1)[None]
        with torch.no_grad():
            reconstruction = ((model(image * 2 - 1).sample.clamp(-1, 1) + 1) / 2).float()
        expected[str(path)] = ms_ssim(image, reconstruction, data_range=1.0).item()
    measured = dict(zip(per_image["file"], per_image["msssim"], strict=True))
    assert measured.keys() == expected.keys()
    for file, value in expected.items():
        assert measured[file] == pytest.approx(value, abs=1e-5)
    values = per_image.groupby("class")["msssim"]
    assert list(summary["class"]) == ["ADI", "TUM", "ALL"]
    assert list(summary["n"]) == [3, 2, 5]
    np.testing.assert_allclose(summary["msssim_mean"][:2], values.mean().to_numpy())
    np.testing.assert_allclose(summary["msssim_std"][:2], values.std(ddof=1).to_numpy())
    assert summary["msssim_mean"].iloc[2] == pytest.approx(np.mean(list(expected.values())), abs=1e-5)
    assert summary["msssim_std"].iloc[2] == pytest.approx(np.std(list(expected.values()), ddof=1), abs=1e-5)
    names = {p.name for p in out.iterdir()}
    assert names == {"msssim.csv", "msssim_images.csv", "msssim.md", "msssim.tex", "msssim.png", "msssim.pdf"}
    pd.testing.assert_frame_equal(pd.read_csv(out / "msssim.csv"), summary, check_exact=False, rtol=1e-5)
    assert "| n " in (out / "msssim.md").read_text()


class ShiftedIdentity(torch.nn.Module):
    """An 'autoencoder' that returns its input brightened by `shift` (in the model's [-1, 1] space)."""

    def __init__(self, shift: float) -> None:
        super().__init__()
        self.shift = torch.nn.Parameter(torch.tensor(shift), requires_grad=False)

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(sample=x + self.shift)


def test_perfect_reconstruction_scores_one_and_data_range_is_unit(pool: Path) -> None:
    summary = compute_msssim(ShiftedIdentity(0.0), pool, MsssimSettings(size=None)).summary
    np.testing.assert_allclose(summary["msssim_mean"], 1.0, atol=1e-6)
    per_image = compute_msssim(ShiftedIdentity(0.2), pool, MsssimSettings(size=None)).per_image
    first = torch.from_numpy(np.asarray(Image.open(pool / "ADI" / "0.png"), dtype=np.float32) / 255)
    first = first.permute(2, 0, 1)[None]
    brighter = (first + 0.1).clamp(0, 1)  # +0.2 in [-1, 1] is +0.1 in [0, 1]
    assert per_image["msssim"].iloc[0] == pytest.approx(
        ms_ssim(first, brighter, data_range=1.0).item(), abs=1e-5
    )
    assert per_image["msssim"].iloc[0] < 0.999


def test_vq_model_is_detected_from_config_and_resized_to_the_paper_size(pool: Path, tmp_path: Path) -> None:
    from diffusers import VQModel

    torch.manual_seed(0)
    VQModel(
        block_out_channels=[4, 8],
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=3,
        num_vq_embeddings=16,
        vq_embed_dim=3,
        norm_num_groups=2,
        layers_per_block=1,
    ).save_pretrained(tmp_path / "vq")
    assert type(load_autoencoder(tmp_path / "vq", "cpu")).__name__ == "VQModel"
    result = compute_msssim(
        tmp_path / "vq", pool, MsssimSettings(classes=["TUM"], max_per_class=1, device="cpu")
    )
    summary, per_image = result.summary, result.per_image
    assert list(summary["n"]) == [1, 1] and len(per_image) == 1
    assert 0.0 <= per_image["msssim"].iloc[0] <= 1.0


def test_small_images_and_bad_folders_fail_clearly(pool: Path, kl_folder: Path, tmp_path: Path) -> None:
    small = tmp_path / "small" / "ADI"
    small.mkdir(parents=True)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(small / "tiny.png")
    with pytest.raises(ImageError, match=r"tiny.png: 64x64 px is too small .*--size 256"):
        evaluate_msssim(kl_folder, small.parent, tmp_path / "out", MsssimSettings(size=None))
    with pytest.raises(HistosynthError, match=f"--size 128: .* {MIN_SIDE} px"):
        compute_msssim(kl_folder, pool, MsssimSettings(size=128))
    config = json.loads((kl_folder / "config.json").read_text())
    (kl_folder / "config.json").write_text(json.dumps({**config, "_class_name": "UNet2DModel"}))
    with pytest.raises(HistosynthError, match="UNet2DModel"):
        load_autoencoder(kl_folder)
    with pytest.raises(HistosynthError, match="config.json"):
        load_autoencoder(tmp_path)
    assert not (tmp_path / "out").exists()


def test_cli_runs_msssim_and_lists_the_pool_commands(
    pool: Path, kl_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import sys

    from typer.testing import CliRunner

    from histosynth.cli import app, main

    help_text = CliRunner().invoke(app, ["evaluate", "--help"]).output
    assert all(command in help_text for command in ("fid", "tsne", "msssim"))
    out = tmp_path / "cli"
    arguments = ["--autoencoder", str(kl_folder), "--data", str(pool), "--out", str(out), "--size", "0"]
    monkeypatch.setattr(sys, "argv", ["histosynth", "evaluate", "msssim", *arguments, "--device", "cpu"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code in (0, None)
    assert "ALL" in capsys.readouterr().out and (out / "msssim.csv").is_file()
