"""StyleGAN2 end to end on a tiny pool: a run that resumes into the uninterrupted one, a pool that
does not depend on the batch size, and the collapse guard rolling back and, past its limit,
giving up with the message."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from histosynth.errors import HistosynthError
from histosynth.pools import read_manifest, sha256_file
from trainer.core.checkpoints import checkpoint_folders
from trainer.core.model_folder import read_model_info
from trainer.generate import generate_pool
from trainer.stylegan2.monitor import CollapseMonitor
from trainer.stylegan2.networks import StyleGAN2Generator
from trainer.stylegan2.options import stylegan2_options
from trainer.stylegan2.train import LOG_NAME, StyleGAN2Settings, train_stylegan2

RUN = dict(epochs=10, checkpoint_every=2)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, tissue: np.ndarray) -> Path:
    """Two classes of four 28 px crops (the tiny preset upsamples them to 32 px)."""
    root = tmp_path_factory.mktemp("stylegan2") / "pool"
    for label, name in enumerate(("ADI", "TUM")):
        (root / name).mkdir(parents=True)
        for item in range(4):
            top, left = 28 * label, 28 * item
            Image.fromarray(tissue[top : top + 28, left : left + 28]).save(root / name / f"{name}-{item}.png")
    return root


@pytest.fixture(scope="module")
def model(pool: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny StyleGAN2 trained for 4 steps without interruption (checks and checkpoints at 2 and 4)."""
    return train_stylegan2(
        pool,
        tmp_path_factory.mktemp("stylegan2") / "model",
        StyleGAN2Settings(stylegan2_options("tiny", max_steps=4, **RUN)),
    )


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "diffusion_pytorch_model.safetensors")


def log_events(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / LOG_NAME).read_text().splitlines()]


def test_a_resumed_run_equals_the_uninterrupted_one(model: Path, pool: Path, tmp_path: Path) -> None:
    info = read_model_info(model, ["stylegan2"])
    assert info["steps"] == 4 and info["classes"] == ["ADI", "TUM"] and info["rollbacks"] == []
    assert info["settings"]["r1_gamma"] == 0.5 and info["settings"]["style_mixing"] == 0.9
    assert [event["step"] for event in log_events(model)] == [2, 4]
    assert all("augment_p" in event for event in log_events(model))

    split = tmp_path / "split"
    train_stylegan2(pool, split, StyleGAN2Settings(stylegan2_options("tiny", max_steps=2, **RUN)))
    train_stylegan2(
        pool, split, StyleGAN2Settings(stylegan2_options("tiny", max_steps=4, **RUN), resume=True)
    )
    for part in ("generator", "discriminator"):
        first, second = weights(model / part), weights(split / part)
        assert first.keys() == second.keys()
        assert all(torch.equal(first[key], second[key]) for key in first), part
    assert read_model_info(split)["augment_p"] == info["augment_p"]
    loaded = StyleGAN2Generator.from_pretrained(model / "generator")
    assert loaded.config.resolution == 32 and loaded.config.num_classes == 2


def test_a_pool_is_the_same_for_any_batch_size_and_resumes(model: Path, tmp_path: Path) -> None:
    one = generate_pool(model, tmp_path / "b1", per_class=3, batch_size=1, truncation=0.7)
    three = generate_pool(model, tmp_path / "b3", per_class=3, batch_size=3, truncation=0.7)
    names = [f"{c}/{i:06d}.png" for c in ("ADI", "TUM") for i in range(3)]
    first = {name: (one / name).read_bytes() for name in names}
    assert first == {name: (three / name).read_bytes() for name in names}
    assert len(set(first.values())) == 6
    manifest = read_manifest(one)
    assert (manifest["sampler"], manifest["truncation"], manifest["steps"]) == ("stylegan2", 0.7, None)
    assert manifest["files"] == {name: sha256_file(one / name) for name in names}
    with Image.open(one / "ADI" / "000000.png") as image:
        assert image.size == (32, 32) and image.mode == "RGB"

    untruncated = generate_pool(model, tmp_path / "psi1", per_class=1, batch_size=2)
    assert (untruncated / "ADI" / "000000.png").read_bytes() != first["ADI/000000.png"]
    (one / "TUM" / "000001.png").unlink()
    resumed = generate_pool(model, one, per_class=3, batch_size=2, truncation=0.7)
    assert (resumed / "TUM" / "000001.png").read_bytes() == first["TUM/000001.png"]
    with pytest.raises(HistosynthError, match="holds another pool \\(truncation differ"):
        generate_pool(model, one, per_class=3, truncation=0.5)
    with pytest.raises(HistosynthError, match="--guidance: diffusion options; a stylegan2 model takes"):
        generate_pool(model, tmp_path / "guided", per_class=1, guidance=2.0)
    assert not (tmp_path / "guided").exists()


def test_a_planted_collapse_rolls_back_with_a_lower_rate_and_a_higher_gamma(
    pool: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The monitor's metric is forced to zero once, at the check of step 2."""
    original = CollapseMonitor.fake_diversity
    calls = []

    def forced(self, generator, device):
        calls.append(1)
        values = original(self, generator, device)
        return [0.0 for _ in values] if len(calls) == 1 else values

    monkeypatch.setattr(CollapseMonitor, "fake_diversity", forced)
    out = train_stylegan2(
        pool, tmp_path / "run", StyleGAN2Settings(stylegan2_options("tiny", max_steps=4, **RUN))
    )
    info = read_model_info(out)
    assert info["steps"] == 4 and len(info["rollbacks"]) == 1
    event = info["rollbacks"][0]
    assert (event["detected_at"], event["rolled_back_to"]) == (2, 0)
    assert (event["learning_rate"], event["r1_gamma"]) == (0.001, 1.0)
    assert event["reasons"] == ["ADI diversity 0.000 < 0.05", "TUM diversity 0.000 < 0.05"]
    assert (info["final_learning_rate"], info["final_r1_gamma"]) == (0.001, 1.0)
    log = [(item["event"], item.get("step", item.get("detected_at"))) for item in log_events(out)]
    assert log == [("check", 2), ("rollback", 2), ("check", 2), ("check", 4)]
    assert json.loads((checkpoint_folders(out)[-1][1] / "run.json").read_text())["rollbacks"] == [event]


def test_a_generator_that_ignores_z_makes_the_run_give_up(
    pool: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = StyleGAN2Generator.map

    def ignore_z(self, z, labels, truncation=1.0):
        return original(self, torch.zeros_like(z), labels, truncation)

    monkeypatch.setattr(StyleGAN2Generator, "map", ignore_z)
    out = tmp_path / "run"
    with pytest.raises(HistosynthError) as raised:
        train_stylegan2(
            pool, out, StyleGAN2Settings(stylegan2_options("tiny", max_steps=4, max_rollbacks=1, **RUN))
        )
    message = str(raised.value)
    assert "mode collapse at step 2 (ADI diversity 0.000 < 0.05; TUM diversity 0.000 < 0.05)" in message
    assert "persisted after 1 rollback(s)" in message and "no model was written" in message
    assert "\n" not in message
    assert not (out / "histosynth.json").exists() and [step for step, _ in checkpoint_folders(out)] == [0]
    assert [item["event"] for item in log_events(out)] == ["check", "rollback", "check", "give-up"]

    monkeypatch.undo()  # a cured generator: more rollbacks may be allowed on resume
    resumed = train_stylegan2(
        pool,
        out,
        StyleGAN2Settings(stylegan2_options("tiny", max_steps=2, max_rollbacks=2, **RUN), resume=True),
    )
    assert read_model_info(resumed)["steps"] == 2


def test_the_cli_trains_and_generates_and_refuses_in_one_line(pool: Path, tmp_path: Path, cli) -> None:
    out = tmp_path / "model"
    common = ["--data", pool, "--preset", "tiny", "--epochs", "10"]
    trained = cli(
        "train", "stylegan2", *common, "--out", out, "--max-steps", "2", "--checkpoint-every", "2",
        "--per-device-batch-size", "2",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    info = read_model_info(out)
    assert (info["global_batch_size"], info["gradient_accumulation"]) == (4, 2)  # two passes a step
    made = cli(
        "generate", "--model", out, "--out", tmp_path / "pool", "--per-class", "2", "--truncation", "0.5"
    )
    assert made.returncode == 0, made.stderr
    assert read_manifest(tmp_path / "pool")["truncation"] == 0.5
    refused = cli("generate", "--model", out, "--out", tmp_path / "c", "--per-class", "1", "--eta", "1")
    assert refused.returncode == 1 and "--eta: diffusion options" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(size=48), "--size 48: StyleGAN2 needs a power of two"),
        (dict(mixed_precision="fp16"), "fp16 loss scaling does not cover"),
        (dict(r1_interval=0), "--r1-interval 0: must be at least 1"),
        (dict(monitor_samples=1), "--monitor-samples 1: must be at least 2"),
        (dict(style_mixing=1.5), "--style-mixing 1.5: must lie in"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_written(
    pool: Path, tmp_path: Path, settings: dict, message: str
) -> None:
    with pytest.raises(HistosynthError, match=message):
        train_stylegan2(pool, tmp_path / "run", StyleGAN2Settings(stylegan2_options("tiny", **settings)))
    assert not (tmp_path / "run").exists()
