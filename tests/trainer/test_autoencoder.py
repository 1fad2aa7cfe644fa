"""The autoencoders: tiny KL and VQ runs end to end, LPIPS without and with weights, resume,
bad input refused in one line with nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, VQModel
from PIL import Image
from safetensors.torch import load_file

from histosynth.errors import HistosynthError, PoolError
from trainer.autoencoder.options import autoencoder_options
from trainer.autoencoder.perceptual import VGG16_FILE, load_lpips
from trainer.autoencoder.train import AutoencoderSettings, train_autoencoder
from trainer.core.model_folder import read_model_info


def test_kl_autoencoder_trains_and_saves_a_diffusers_folder(make_tiles, tmp_path: Path) -> None:
    pool = make_tiles()
    out = train_autoencoder(
        pool,
        tmp_path / "kl",
        AutoencoderSettings(
            autoencoder_options("kl", "tiny", perceptual=False, max_steps=3, per_device_batch_size=1)
        ),
    )
    model = AutoencoderKL.from_pretrained(out)
    assert model.config.block_out_channels == [8, 16, 16, 16] and model.config.latent_channels == 4
    info = read_model_info(out, ["kl-autoencoder"])
    assert info["classes"] == ["ADI", "TUM"] and info["steps"] == 3 and info["preset"] == "tiny"
    assert info["settings"]["effective_learning_rate"] == pytest.approx(1e-4 * 2)  # base x global batch
    assert {key: info[key] for key in ("global_batch_size", "num_processes", "gradient_accumulation")} == {
        "global_batch_size": 2,
        "num_processes": 1,
        "gradient_accumulation": 2,  # two passes of one tile each, one optimizer step
    }
    assert info["learning_rate"] == pytest.approx(2e-4) and info["images_seen"] == 6
    assert info["data_fingerprint"]["files"] == 8
    assert set(info["versions"]) == {"torch", "diffusers"}
    latents = model.encode(torch.zeros(1, 3, 32, 32)).latent_dist.mean
    assert latents.shape == (1, 4, 4, 4)  # f = 8


def test_vq_autoencoder_trains_from_the_cli_with_attention(make_tiles, tmp_path: Path, cli) -> None:
    pool = make_tiles()
    out = tmp_path / "vq"
    result = cli(
        "train",
        "autoencoder",
        "--kind",
        "vq",
        "--preset",
        "tiny",
        "--data",
        pool,
        "--out",
        out,
        "--no-perceptual",
        "--max-steps",
        "2",
    )
    assert result.returncode == 0, result.stderr
    model = VQModel.from_pretrained(out)
    assert "AttnDownEncoderBlock2D" in model.config.down_block_types
    assert read_model_info(out)["kind"] == "vq-autoencoder"
    assert (out / "checkpoints" / "step-2" / "run.json").is_file()


def test_lpips_without_vgg_weights_names_the_file_and_writes_nothing(make_tiles, tmp_path: Path, cli) -> None:
    pool = make_tiles()
    out = tmp_path / "kl"
    args = ("train", "autoencoder", "--preset", "tiny", "--data", pool, "--out", out, "--max-steps", "1")
    result = cli(*args, "--perceptual")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and VGG16_FILE in lines[0] and "--no-perceptual" in lines[0]
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / VGG16_FILE) in lines[0]
    assert not out.exists()
    offline = cli(*args)  # the tiny preset runs offline: no perceptual term unless asked for
    assert offline.returncode == 0, offline.stderr
    assert read_model_info(out)["settings"]["perceptual"] is False


def test_perceptual_weights_turn_on_the_perceptual_term_of_the_tiny_preset(
    vgg_file: Path, make_tiles, tmp_path: Path, cli
) -> None:
    out = tmp_path / "kl"
    common = ("--preset", "tiny", "--data", make_tiles(), "--out", out, "--max-steps", "1")
    result = cli("train", "autoencoder", *common, "--perceptual-weights", vgg_file)
    assert result.returncode == 0, result.stderr
    info = read_model_info(out)
    assert info["settings"]["perceptual"] is True and info["perceptual_weights"] == str(vgg_file)


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torchvision-layout VGG16 state dict (random weights: the layout, not the values, is tested)."""
    from torchvision.models import vgg16

    torch.manual_seed(0)
    features = vgg16().features.state_dict()
    path = tmp_path_factory.mktemp("vgg") / VGG16_FILE
    torch.save({f"features.{key}": value for key, value in features.items()}, path)
    return path


def test_lpips_reads_the_backbone_from_a_local_file(vgg_file: Path, make_tiles, tmp_path: Path) -> None:
    lpips_model = load_lpips(vgg_file)
    expected = torch.load(vgg_file, weights_only=True)["features.28.weight"]
    assert torch.equal(lpips_model.net.slice5.get_submodule("28").weight, expected)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    assert lpips_model(images, images).abs().max() < 1e-6
    assert (lpips_model(images, images.flip(0)) > 0).all()
    out = train_autoencoder(
        make_tiles(),
        tmp_path / "kl",
        AutoencoderSettings(
            autoencoder_options("kl", "tiny", max_steps=1, perceptual=True), perceptual_weights=vgg_file
        ),
    )
    assert read_model_info(out)["settings"]["perceptual"] is True


def test_lpips_rejects_a_file_that_is_not_vgg16(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.pth"
    torch.save({"weight": torch.zeros(1)}, wrong)
    with pytest.raises(HistosynthError, match="not torchvision's VGG16"):
        load_lpips(wrong)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "diffusion_pytorch_model.safetensors")


def test_resume_equals_an_uninterrupted_run(make_tiles, tmp_path: Path) -> None:
    """6 steps at once vs 3 + resume to 6: an epoch boundary (4 steps) and the discriminator's start
    (step 2) fall on either side of the interruption; every weight must be bit-identical."""
    pool = make_tiles()
    settings = dict(perceptual=False, epochs=2, checkpoint_every=100)
    whole = train_autoencoder(
        pool,
        tmp_path / "whole",
        AutoencoderSettings(autoencoder_options("kl", "tiny", max_steps=6, **settings)),
    )
    part = train_autoencoder(
        pool,
        tmp_path / "part",
        AutoencoderSettings(autoencoder_options("kl", "tiny", max_steps=3, **settings)),
    )
    assert read_model_info(part)["steps"] == 3
    resumed = train_autoencoder(
        pool,
        part,
        AutoencoderSettings(autoencoder_options("kl", "tiny", max_steps=6, **settings), resume=True),
    )
    assert read_model_info(resumed)["steps"] == 6
    first, second = weights(whole), weights(resumed)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
    discriminators = [
        load_file(folder / "checkpoints" / "step-6" / "model_1.safetensors") for folder in (whole, part)
    ]
    assert all(torch.equal(discriminators[0][key], discriminators[1][key]) for key in discriminators[0])


def test_resume_refuses_changed_settings_and_a_fresh_run_refuses_an_old_one(
    make_tiles, tmp_path: Path
) -> None:
    pool = make_tiles()
    out = train_autoencoder(
        pool,
        tmp_path / "kl",
        AutoencoderSettings(
            autoencoder_options("kl", "tiny", perceptual=False, max_steps=1, fingerprint="sha256")
        ),
    )
    assert set(read_model_info(out)["data_fingerprint"]) == {"files", "contents_sha256"}
    with pytest.raises(HistosynthError, match="holds another run; pass --resume"):
        train_autoencoder(
            pool, out, AutoencoderSettings(autoencoder_options("kl", "tiny", perceptual=False, max_steps=1))
        )
    with pytest.raises(HistosynthError, match="other settings \\(batch_size\\)"):
        train_autoencoder(
            pool,
            out,
            AutoencoderSettings(
                autoencoder_options(
                    "kl", "tiny", perceptual=False, max_steps=2, batch_size=4, fingerprint="sha256"
                ),
                resume=True,
            ),
        )
    with pytest.raises(HistosynthError, match="other settings \\(fingerprint\\)"):
        train_autoencoder(
            pool,
            out,
            AutoencoderSettings(
                autoencoder_options("kl", "tiny", perceptual=False, max_steps=2), resume=True
            ),
        )  # names, not sha256
    with pytest.raises(HistosynthError, match="other settings \\(block_out_channels\\)"):  # not a load error
        train_autoencoder(
            pool,
            out,
            AutoencoderSettings(
                autoencoder_options(
                    "kl",
                    "tiny",
                    perceptual=False,
                    max_steps=2,
                    fingerprint="sha256",
                    block_out_channels=(8, 16, 16, 32),
                ),
                resume=True,
            ),
        )
    run_file = out / "checkpoints" / "step-1" / "run.json"
    run = json.loads(run_file.read_text())
    del run["record_version"]  # as a checkpoint from before --batch-size was global
    run_file.write_text(json.dumps(run))
    with pytest.raises(HistosynthError, match="--batch-size was per process \\(run record version 1"):
        train_autoencoder(
            pool,
            out,
            AutoencoderSettings(
                autoencoder_options("kl", "tiny", perceptual=False, max_steps=2, fingerprint="sha256"),
                resume=True,
            ),
        )
    assert read_model_info(out)["steps"] == 1
    shutil.rmtree(out / "checkpoints")
    with pytest.raises(HistosynthError, match="holds a model but no checkpoint"):
        train_autoencoder(
            pool,
            out,
            AutoencoderSettings(
                autoencoder_options("kl", "tiny", perceptual=False, max_steps=2), resume=True
            ),
        )


def test_bad_pools_are_refused_in_one_line_with_nothing_written(make_tiles, tmp_path: Path, cli) -> None:
    single = make_tiles("single", classes=("ADI",))
    mixed = make_tiles("mixed")
    Image.new("RGB", (30, 30)).save(mixed / "TUM" / "TUM-99.png")
    not_a_pool = tmp_path / "flat"
    not_a_pool.mkdir()
    Image.new("RGB", (28, 28)).save(not_a_pool / "tile.png")
    out = tmp_path / "out"
    result = cli("train", "autoencoder", "--preset", "tiny", "--no-perceptual", "--data", mixed, "--out", out)
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "30x30 px, but" in result.stderr, result.stderr
    for pool, message in {single: "only one class", not_a_pool: "no class folders"}.items():
        with pytest.raises(PoolError, match=message):
            train_autoencoder(
                pool, out, AutoencoderSettings(autoencoder_options("kl", "tiny", perceptual=False))
            )
    assert not out.exists()


def test_run_record_in_each_checkpoint(make_tiles, tmp_path: Path) -> None:
    out = train_autoencoder(
        make_tiles(),
        tmp_path / "kl",
        AutoencoderSettings(
            autoencoder_options(
                "kl", "tiny", perceptual=False, max_steps=3, checkpoint_every=1, keep_checkpoints=2
            )
        ),
    )
    steps = sorted(path.name for path in (out / "checkpoints").iterdir())
    assert steps == ["step-2", "step-3"]  # rotated: the newest two
    run = json.loads((out / "checkpoints" / "step-3" / "run.json").read_text())
    assert run["step"] == 3 and run["classes"] == ["ADI", "TUM"] and run["settings"]["seed"] == 0
