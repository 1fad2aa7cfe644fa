"""`histosynth train classifier`: tiny runs of the three arms, the kept checkpoint, and the refusals.

Runs use the tiny preset (32 px, 1 epoch) with `--pretrained none` on tiles cut from the real H&E
slide (tests/trainer/conftest.py), so no weights are needed and nothing downloads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from fastai.callback.core import Callback
from PIL import Image

from histosynth.errors import HistosynthError
from histosynth.pools import read_pool
from trainer.classifier.arms import arm_data, arm_sources, parse_arms, parse_caps, read_sources
from trainer.classifier.experiment import ClassifierSettings, train_classifier
from trainer.classifier.learner import (
    WEIGHT_FILES,
    build_learner,
    build_model,
    fit_best,
    load_body_weights,
    load_classifier,
    predict,
    pretrained_weights,
)
from trainer.classifier.options import classifier_options
from trainer.classifier.report import OWNED
from trainer.classifier.stain import default_reference, fit_normalizer, prepare_tiles


def test_three_arms_and_two_seeds_write_every_table_and_a_model_per_run(make_tiles, cli, tmp_path) -> None:
    real = make_tiles("real", per_class=6)
    synthetic = make_tiles("klf8", per_class=6)
    test = make_tiles("test", per_class=4)
    out = tmp_path / "results"
    result = cli(
        "train", "classifier", "--train", f"real={real}", "--train", f"KLF8-DM={synthetic}",
        "--test", test, "--out", out, "--preset", "tiny", "--pretrained", "none", "--seeds", "2",
        "--cap", "KLF8-DM=5", "--resume", "--max-steps", "2", "--checkpoint-every", "1",
        "--keep-checkpoints", "1", "--keep-finished-checkpoints", "--fingerprint", "sha256",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert {path.name for path in out.iterdir()} == set(OWNED) | {"models", "checkpoints"}

    accuracy = pd.read_csv(out / "classifier_accuracy.csv")
    assert list(accuracy.columns) == ["arm", "seed", "class", "accuracy", "n"]
    assert len(accuracy) == 3 * 2 * 3 and set(accuracy["class"]) == {"ADI", "TUM", "ALL"}
    confusion = pd.read_csv(out / "classifier_confusion.csv")
    for (arm, seed), counts in confusion.groupby(["arm", "seed"]):  # the accuracies, recounted
        rows = accuracy[(accuracy["arm"] == arm) & (accuracy["seed"] == seed)].set_index("class")
        hits = counts[counts["true"] == counts["predicted"]].set_index("true")["count"]
        assert rows.loc["ALL", "accuracy"] == pytest.approx(hits.sum() / counts["count"].sum())
        for name in ("ADI", "TUM"):
            assert rows.loc[name, "accuracy"] == pytest.approx(hits[name] / 4) and rows.loc[name, "n"] == 4

    table = (out / "classifier_accuracy.md").read_text(encoding="utf-8")
    assert "| trained on | ADI | TUM | ALL | balanced accuracy | macro F1 |" in table
    for label in ("real", "synthetic (KLF8-DM)", "combined (real + KLF8-DM)"):
        assert f"| {label} |" in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and "±" in line]
    assert (
        len(rows) == 3
        and all(line.count("±") == 5 for line in rows)
        and r"$\pm$" in (out / "classifier_accuracy.tex").read_text()
    )
    metrics = pd.read_csv(out / "classifier_metrics.csv").set_index(["arm", "seed"])
    assert metrics.loc[("synthetic", 0), "n_train"] == 2 * 4  # capped at 5 per class, 1 held out
    assert metrics.loc[("real", 0), "n_train"] == 2 * 5 and metrics.loc[("combined", 1), "n_train"] == 18
    comparison = pd.read_csv(out / "classifier_comparison.csv")
    assert len(comparison) == 3 * 3 and comparison["p_sign_flip"].between(0, 1).all()
    assert (comparison["min_attainable_p"] == 0.5).all()
    for arm in ("real", "synthetic", "combined"):
        with Image.open(out / f"classifier_confusion_{arm}.png") as image:
            assert image.width > 200
        assert (out / f"classifier_confusion_{arm}.pdf").read_bytes().startswith(b"%PDF")
    record = json.loads((out / "classifier.json").read_text())
    assert record["seeds"] == [0, 1] and record["arms"]["combined"] == ["real", "KLF8-DM"]
    assert record["stain_tiles"] == 32 and isinstance(record["stain_passed_through"], int)

    models = sorted((out / "models").iterdir())
    assert [folder.name for folder in models] == [
        f"{arm}-seed{seed}" for arm in ("combined", "real", "synthetic") for seed in (0, 1)
    ]
    folder = out / "models" / "combined-seed1"
    info = json.loads((folder / "histosynth.json").read_text())
    assert info["kind"] == "classifier" and info["classes"] == ["ADI", "TUM"] and info["seed"] == 1
    assert set(info["data_fingerprint"]) == {"real", "KLF8-DM"} and info["settings"]["preset"] == "tiny"
    assert set(info["data_fingerprint"]["real"]) == {"files", "contents_sha256"}  # --fingerprint sha256
    assert [path.name for path in (out / "checkpoints" / "combined-seed1").iterdir()] == ["step-2"]  # kept 1
    assert (folder / "stain_reference.png").read_bytes() == default_reference().read_bytes()
    assert (
        json.loads((folder / "stain.json").read_text())["reference_sha256"]
        == record["stain"]["reference_sha256"]
    )

    model, config = load_classifier(folder)  # the saved weights give the reported accuracy
    files = [path for paths in read_pool(test).files.values() for path in paths]
    prepared = prepare_tiles(files, fit_normalizer(), config["size"])
    predicted = predict(model, [prepared.arrays[path] for path in files], 4)
    truth = np.repeat([0, 1], 4)
    reported = accuracy[(accuracy["arm"] == "combined") & (accuracy["seed"] == 1)].set_index("class")
    assert np.mean(predicted == truth) == pytest.approx(reported.loc["ALL", "accuracy"])


class SpoilLastEpoch(Callback):
    """Before the last validation, zero the head's last layer and make it say ADI with certainty."""

    def before_validate(self) -> None:
        if self.epoch == self.n_epoch - 1:
            linear = self.learn.model[1][-1]
            with torch.no_grad():
                linear.weight.zero_()
            shift = torch.tensor([1000.0, -1000.0])
            self.hook = linear.register_forward_hook(lambda module, args, output: output + shift.to(output))
            self.spoiled = {key: value.clone() for key, value in self.learn.model.state_dict().items()}

    def after_validate(self) -> None:
        if self.epoch == self.n_epoch - 1:
            self.hook.remove()


def test_the_checkpoint_with_the_lowest_validation_loss_is_the_one_kept(make_tiles, tmp_path) -> None:
    pools = read_sources({"real": make_tiles("real", per_class=6)}, ["ADI", "TUM"])
    design = arm_data("real", 0, ["real"], pools, ["ADI", "TUM"], {}, 0.34)
    prepared = prepare_tiles([path for path, _ in design.train + design.valid], fit_normalizer(), 32)
    options = classifier_options("tiny", epochs=3, batch_size=4)
    learn = build_learner(
        [(prepared.arrays[path], label) for path, label in design.train],
        [(prepared.arrays[path], label) for path, label in design.valid],
        2,
        options,
        None,
        tmp_path,
    )
    spoiler = SpoilLastEpoch()
    learn.add_cb(spoiler)
    fit = fit_best(learn, options, description="test", progress=False)
    assert fit.best_epoch < 2 and fit.valid_losses[-1] > 100 > fit.valid_losses[fit.best_epoch]
    assert fit.best_epoch == int(np.argmin(fit.valid_losses))
    saved = torch.load(tmp_path / "models" / "best.pth", weights_only=True)  # SaveModelCallback's file
    final = learn.model.state_dict()
    assert all(torch.equal(final[key].cpu(), saved[key].cpu()) for key in saved)
    last = [key for key in final if key.startswith("1.")][-1]  # the head's last weight, zeroed when spoiled
    assert not spoiler.spoiled[last].any() and final[last].any()


@pytest.fixture
def sources(make_tiles) -> dict[str, Path]:
    return {"real": make_tiles("real", per_class=5), "KLF8-DM": make_tiles("klf8", per_class=5)}


def test_a_test_class_the_training_pools_lack_is_refused_before_training(
    make_tiles, sources, tmp_path
) -> None:
    test = make_tiles("test", classes=("ADI", "MUC", "TUM"), per_class=2)
    with pytest.raises(HistosynthError, match=r"class MUC has no training tiles in arm 'real'"):
        train_classifier(sources, test, tmp_path / "out", ClassifierSettings(pretrained="none"))
    assert not (tmp_path / "out").exists()
    extra = make_tiles("extra", classes=("ADI", "STR", "TUM"), per_class=2)
    with pytest.raises(HistosynthError, match=r"--train extra=.*class STR is not in the test pool"):
        train_classifier(
            {"extra": extra}, make_tiles("test2"), tmp_path / "out", ClassifierSettings(pretrained="none")
        )


def test_missing_imagenet_weights_name_the_file_and_where_it_goes(make_tiles, sources, cli, tmp_path) -> None:
    test = make_tiles("test", per_class=2)
    result = cli("train", "classifier", "--train", f"real={sources['real']}", "--test", test,
                 "--out", tmp_path / "out", "--arms", "real", "--preset", "paper")  # fmt: skip
    hub = tmp_path / "torch" / "hub" / "checkpoints" / "resnet34-b627a593.pth"
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: ") and str(hub) in result.stderr
    assert "--pretrained none" in result.stderr and not (tmp_path / "out").exists()
    with pytest.raises(HistosynthError, match=r"--pretrained .*nothing.pth: no such file"):
        pretrained_weights("resnet34", tmp_path / "nothing.pth")


def test_imagenet_weights_from_the_hub_cache_fill_the_body(tmp_path) -> None:
    import torchvision

    reference = torchvision.models.resnet18(weights=None)
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(reference.state_dict(), hub / WEIGHT_FILES["resnet18"])
    path = pretrained_weights("resnet18", None)
    assert path == hub / WEIGHT_FILES["resnet18"]
    model = build_model("resnet18", 3)
    load_body_weights(model, "resnet18", path)
    assert torch.equal(model[0][0].weight, reference.conv1.weight)
    assert torch.equal(model[0][7][1].conv2.weight, reference.layer4[1].conv2.weight)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(HistosynthError, match=r"wrong.pth: not torchvision's resnet18 state dict"):
        load_body_weights(model, "resnet18", tmp_path / "wrong.pth")
    assert pretrained_weights("resnet18", "none") is None


def test_the_tiny_body_trains_from_scratch_and_refuses_imagenet_weights(tmp_path) -> None:
    assert classifier_options("tiny").arch == "xresnet18_narrow"
    assert pretrained_weights("xresnet18_narrow", None) is None  # no hub file is looked for
    with pytest.raises(HistosynthError, match=r"xresnet18_narrow has no ImageNet weights.*--arch resnet18"):
        pretrained_weights("xresnet18_narrow", tmp_path / "resnet18-f37072fd.pth")
    with pytest.raises(HistosynthError, match=r"--arch 'resnet9': expected one of resnet18, .*_narrow"):
        pretrained_weights("resnet9", None)
    narrow, resnet18 = build_model("xresnet18_narrow", 9), build_model("resnet18", 9)
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in resnet18.parameters()) / 10
    assert narrow(torch.zeros(2, 3, 32, 32)).shape == (2, 9)


def test_arms_caps_and_the_validation_split_follow_the_seed(make_tiles, sources) -> None:
    assert parse_arms("combined,real") == ["combined", "real"]
    for bad in ("real,real", "augmented", ""):
        with pytest.raises(HistosynthError, match="--arms"):
            parse_arms(bad)
    with pytest.raises(HistosynthError, match="needs a synthetic --train source"):
        arm_sources("synthetic", ["real"])
    with pytest.raises(HistosynthError, match="needs a --train source named 'real'"):
        arm_sources("combined", ["KLF8-DM"])
    assert parse_caps(["KLF8-DM=3"], sources) == {"KLF8-DM": 3}
    for bad, message in (
        ("KLF8=3", "no --train source"),
        ("real=x", "expected NAME=N"),
        ("real=0", "at least"),
    ):
        with pytest.raises(HistosynthError, match=message):
            parse_caps([bad], sources)

    pools = read_sources(sources, ["ADI", "TUM"])
    combined = arm_data("combined", 4, ["real", "KLF8-DM"], pools, ["ADI", "TUM"], {"KLF8-DM": 3}, 0.4)
    real = arm_data("real", 4, ["real"], pools, ["ADI", "TUM"], {}, 0.4)
    real_again = arm_data("real", 4, ["real"], pools, ["ADI", "TUM"], {}, 0.4)
    assert real == real_again  # a pure function of the seed
    in_real = {path for path, _ in combined.valid if path.is_relative_to(sources["real"])}
    assert in_real == {path for path, _ in real.valid}  # the arms share their real validation tiles
    synthetic = [
        label for path, label in combined.train + combined.valid if path.is_relative_to(sources["KLF8-DM"])
    ]
    assert sorted(synthetic) == [0, 0, 0, 1, 1, 1]  # capped at 3 per class
    assert sorted(label for _, label in real.valid) == [0, 0, 1, 1]  # stratified: 2 of 5 per class
    seeds = {
        frozenset(p for p, _ in arm_data("real", s, ["real"], pools, ["ADI", "TUM"], {}, 0.4).valid)
        for s in range(6)
    }
    assert len(seeds) > 1
