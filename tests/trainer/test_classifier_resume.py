"""`histosynth train classifier --resume`: checkpoints, the exact continuation, the refusals, fingerprints.

Runs use the tiny preset (ResNet18 at 32 px) from scratch on a few tiles, with 2 steps an epoch,
so stops at the end of the first epoch and inside the second exercise both resume points: the
replay of a finished epoch, and the continuation inside an unfinished one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from histosynth.errors import HistosynthError
from trainer.classifier.experiment import ClassifierSettings, train_classifier
from trainer.classifier.options import classifier_options
from trainer.core.data import read_training_pool

RUN = dict(epochs=2, batch_size=2, checkpoint_every=2)


def settings(
    resume: bool = False, caps: dict[str, int] | None = None, keep: bool = True, **options: object
) -> ClassifierSettings:
    """The arm `real` from scratch with the tiny preset and these options (`keep`: finished checkpoints)."""
    tiny = classifier_options("tiny", **options)
    return ClassifierSettings(
        options=tiny,
        arms="real",
        pretrained="none",
        resume=resume,
        caps=caps or {},
        keep_finished_checkpoints=keep,
    )


def checkpoints(out: Path) -> list[str]:
    return sorted(path.name for path in (out / "checkpoints" / "real-seed0").iterdir())


def test_a_fit_stopped_by_max_steps_and_resumed_equals_an_uninterrupted_one(make_tiles, tmp_path) -> None:
    real, test = make_tiles("real", per_class=3), make_tiles("test", per_class=2)
    whole = train_classifier({"real": real}, test, tmp_path / "whole", settings(**RUN))
    assert checkpoints(tmp_path / "whole") == ["step-2", "step-4"]  # every 2 steps and at the end

    out = tmp_path / "resumed"
    stopped = train_classifier({"real": real}, test, out, settings(max_steps=2, **RUN))  # an epoch's end
    assert stopped.metrics.loc[0, "steps"] == 2 and stopped.metrics.loc[0, "best_epoch"] == 1
    train_classifier({"real": real}, test, out, settings(resume=True, max_steps=3, **RUN))  # inside one
    assert checkpoints(out) == ["step-2", "step-3"]
    positions = []
    for step in (2, 3):
        stored = json.loads((out / "checkpoints" / "real-seed0" / f"step-{step}" / "run.json").read_text())
        positions.append((stored["epoch"], stored["iteration"], len(stored["values"])))
    assert positions == [(1, 0, 1), (1, 1, 1)]  # (epoch, next batch, epochs recorded)

    train_classifier({"real": real}, test, out, settings(resume=True, **RUN))
    assert checkpoints(out) == ["step-3", "step-4"]
    model = "models/real-seed0/model.safetensors"  # the kept (best-validation) weights
    assert (out / model).read_bytes() == (tmp_path / "whole" / model).read_bytes()
    learner = "checkpoints/real-seed0/step-4/learner.pth"  # the last weights and Adam's state
    states = [torch.load(root / learner, weights_only=False) for root in (out, tmp_path / "whole")]
    assert states[0]["model"].keys() == states[1]["model"].keys()
    assert all(torch.equal(value, states[1]["model"][key]) for key, value in states[0]["model"].items())
    moments = [[value for state in saved["opt"]["state"] for value in state.values()] for saved in states]
    assert len(moments[0]) == len(moments[1]) > 0
    assert all(torch.equal(a, b) if torch.is_tensor(a) else a == b for a, b in zip(*moments, strict=True))
    for name in ("classifier_accuracy.csv", "classifier_metrics.csv", "classifier_confusion.csv"):
        assert (out / name).read_text() == (tmp_path / "whole" / name).read_text()
    infos = [
        json.loads((root / "models" / "real-seed0" / "histosynth.json").read_text())
        for root in (out, tmp_path / "whole")
    ]
    for key in ("steps", "best_epoch", "train_losses", "valid_losses"):
        assert infos[0][key] == infos[1][key]
    assert infos[0]["steps"] == 4

    final = out / "checkpoints" / "real-seed0" / "step-4" / "run.json"
    published = out / "models" / "real-seed0" / "histosynth.json"
    written = final.stat().st_mtime_ns, published.stat().st_mtime_ns
    # finished: its saved model is tested, nothing is trained or saved again
    again = train_classifier({"real": real}, test, out, settings(resume=True, **RUN))
    assert (final.stat().st_mtime_ns, published.stat().st_mtime_ns) == written
    pd.testing.assert_frame_equal(again.metrics, whole.metrics)


def test_a_finished_fit_removes_its_checkpoints_and_resume_reuses_its_model(make_tiles, tmp_path) -> None:
    real, test = make_tiles("real", per_class=3), make_tiles("test", per_class=2)
    out = tmp_path / "out"
    stopped = train_classifier({"real": real}, test, out, settings(keep=False, max_steps=3, **RUN))
    assert stopped.metrics.loc[0, "steps"] == 3
    assert checkpoints(out) == ["step-2", "step-3"]  # stopped by --max-steps: kept, to go on
    done = train_classifier({"real": real}, test, out, settings(resume=True, keep=False, **RUN))
    assert done.metrics.loc[0, "steps"] == 4
    assert not (out / "checkpoints").exists()  # the whole schedule ran: nothing left to resume
    published = out / "models" / "real-seed0" / "histosynth.json"
    written = published.stat().st_mtime_ns
    again = train_classifier({"real": real}, test, out, settings(resume=True, keep=False, **RUN))
    assert published.stat().st_mtime_ns == written  # reused, not trained again
    pd.testing.assert_frame_equal(again.metrics, done.metrics)
    with pytest.raises(HistosynthError, match=r"real-seed0: the run used other settings \(learning_rate\)"):
        train_classifier({"real": real}, test, out, settings(resume=True, learning_rate=0.01, **RUN))
    with pytest.raises(HistosynthError, match=r"real-seed0: the run used other settings \(--cap\)"):
        train_classifier({"real": real}, test, out, settings(resume=True, caps={"real": 2}, **RUN))


def test_resume_refuses_changed_settings_and_pools_and_a_fresh_run_refuses_an_experiment(
    make_tiles, tmp_path
) -> None:
    real, test = make_tiles("real", per_class=5), make_tiles("test", per_class=2)
    out = tmp_path / "out"
    run = dict(batch_size=4, max_steps=1, fingerprint="sha256")
    first = train_classifier({"real": real}, test, out, settings(**run))
    # stopped before the first validation: the last weights are kept, no epoch is named
    assert first.metrics.loc[0, "best_epoch"] == 0 and np.isnan(first.metrics.loc[0, "best_valid_loss"])

    with pytest.raises(HistosynthError, match=r"holds another experiment .*pass --resume"):
        train_classifier({"real": real}, test, out, settings(**run))
    for change, named in (
        ({"learning_rate": 0.01}, "learning_rate"),
        ({"epochs": 2}, "epochs"),  # the one-cycle schedule spans the whole fit
        ({"fingerprint": "names"}, "fingerprint"),
        ({"caps": {"real": 3}}, "--cap"),
    ):
        with pytest.raises(HistosynthError, match=rf"step-1: the run used other settings \({named}\)"):
            train_classifier({"real": real}, test, out, settings(resume=True, **{**run, **change}))
    again = train_classifier(
        {"real": real}, test, out, settings(resume=True, **{**run, "checkpoint_every": 7})
    )
    pd.testing.assert_frame_equal(again.metrics, first.metrics)

    tile = real / "ADI" / "ADI-00.png"
    pixels = np.asarray(Image.open(tile)).copy()
    pixels[0, 0] ^= 1
    Image.fromarray(pixels).save(tile)
    with pytest.raises(HistosynthError, match=r"different pool \(file names or contents differ, by sha256\)"):
        train_classifier({"real": real}, test, out, settings(resume=True, **run))


def test_a_same_size_pixel_edit_changes_only_the_sha256_fingerprint(make_tiles) -> None:
    pool = make_tiles("pool", per_class=2)
    tile = pool / "TUM" / "TUM-01.tif"  # uncompressed: an edited pixel keeps the byte size
    Image.open(pool / "TUM" / "TUM-01.png").save(tile)
    (pool / "TUM" / "TUM-01.png").unlink()
    names = read_training_pool(pool).fingerprint
    contents = read_training_pool(pool, fingerprint="sha256", progress=False).fingerprint
    assert set(names) == {"files", "names_and_sizes_sha256"} and set(contents) == {"files", "contents_sha256"}

    size = tile.stat().st_size
    pixels = np.asarray(Image.open(tile)).copy()
    pixels[3, 3] ^= 1
    Image.fromarray(pixels).save(tile)
    assert tile.stat().st_size == size
    assert read_training_pool(pool).fingerprint == names
    assert read_training_pool(pool, fingerprint="sha256", progress=False).fingerprint != contents
    with pytest.raises(HistosynthError, match=r"--fingerprint 'md5': expected one of names, sha256"):
        classifier_options("tiny", fingerprint="md5")
