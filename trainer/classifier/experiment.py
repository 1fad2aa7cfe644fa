"""`histosynth train classifier`: does synthetic data improve a tissue classifier? (the paper's Table 3)

The experiment in one call. The `--train NAME=POOL` sources are grouped by role into the arms
(`trainer.classifier.arms`: `real`, `synthetic`, `combined`); every arm is trained once per seed
with the same seeds (`trainer.classifier.learner`: fastai ResNet34, one-cycle, the checkpoint
with the lowest validation loss), on Macenko-normalised tiles (`trainer.classifier.stain`), and tested on
the `--test` pool; the scores, Table 3 and the paired comparison of arms are written by
`trainer.classifier.report`. Each run's model is saved as `<out>/models/<arm>-seed<S>/`:
`model.safetensors` and `config.json` (fastai's ResNet with its head; `load_classifier`
rebuilds it), the stain reference tile and `stain.json`, sealed by a `histosynth.json` of kind
`classifier`. Each fit is checkpointed in `<out>/checkpoints/<arm>-seed<S>/step-N/`, so
`resume` continues an interrupted experiment with the same result (`trainer.classifier.resume`);
a fit that has run its whole schedule removes its checkpoints, and `resume` reuses its model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from fastai.torch_core import default_device, rank_distrib

from histosynth.errors import HistosynthError
from histosynth.files import atomic_write_text
from histosynth.pools import read_pool
from histosynth.tables import ALL_CLASSES
from trainer.classifier.arms import arm_data, arm_sources, check_coverage, parse_arms, read_sources
from trainer.classifier.learner import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FitRecord,
    best_weights_path,
    build_learner,
    fit_best,
    load_classifier,
    predict,
    pretrained_weights,
    save_classifier,
)
from trainer.classifier.options import ClassifierOptions, classifier_options
from trainer.classifier.report import write_report
from trainer.classifier.resume import (
    MODELS,
    Checkpoints,
    check_experiment_folder,
    finished_fit,
    remove_checkpoints,
    resume_checkpoint,
)
from trainer.classifier.stain import fit_normalizer, prepare_tiles
from trainer.classifier.stats import compare_arms, run_scores
from trainer.core.data import pool_fingerprint
from trainer.core.loop import total_steps
from trainer.core.model_folder import CHECKPOINTS, publish_model, write_model_info
from trainer.core.options import to_record

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassifierResult:
    """What `train_classifier` wrote and measured."""

    out: Path
    files: list[Path]
    models: list[Path]
    accuracy: pd.DataFrame
    metrics: pd.DataFrame
    comparison: pd.DataFrame


@dataclass(frozen=True)
class ClassifierSettings:
    """How `train_classifier` runs the experiment; each field is the CLI option of that name.

    Attributes:
        options: the settings of every fit (`trainer.core.options.ClassifierOptions`, made from a
            preset by `trainer.core.options.resolve`, e.g. `classifier_options("paper",
            max_steps=5)`); default: the `tiny` preset (CPU smoke runs).
        arms: which of `real`, `synthetic`, `combined` to train, comma-separated or a list.
        seeds: repeats of every arm, seeds `seed`, `seed + 1`, ...; mean ± std is over them.
        caps: tiles per class drawn from a source (for balanced classes); others use all.
        pretrained: torchvision's ImageNet weights file, `none` (train from scratch), or None
            for torch's hub cache.
        stain_reference: the Macenko reference tile (None: the one histosynth ships).
        resume: continue every (arm, seed) from its newest checkpoint in
            `out/checkpoints/<arm>-seed<S>/`, reusing those already finished; the result
            equals an uninterrupted run's.
        keep_finished_checkpoints: keep a fit's checkpoints once it has run its whole schedule
            (by default they are removed: they exist to resume an unfinished fit, and two of
            them take 7 times the model's size, 584 MB for a ResNet34; a fit stopped by
            `max_steps` keeps them to go on).
        progress: show progress bars (None: when stderr is a terminal).
    """

    options: ClassifierOptions = dataclasses.field(default_factory=lambda: classifier_options("tiny"))
    arms: str | Sequence[str] = "real,synthetic,combined"
    seeds: int = 1
    caps: Mapping[str, int] = dataclasses.field(default_factory=dict)
    pretrained: str | Path | None = None
    stain_reference: str | Path | None = None
    resume: bool = False
    keep_finished_checkpoints: bool = False
    progress: bool | None = None


def train_classifier(
    train: Mapping[str, str | Path],
    test: str | Path,
    out: str | Path,
    settings: ClassifierSettings | None = None,
) -> ClassifierResult:
    """Train and test the classifier of every arm and seed; write Table 3 and the comparison.

    Args:
        train: source name -> pool; the source named `real` is real, every other synthetic.
        test: the test pool; its classes are the label set every arm must cover.
        out: the output folder (tables, figures, `models/`, `checkpoints/`).
        settings: see `ClassifierSettings`; None uses its defaults.

    Returns:
        The files written, the saved models and the score frames.

    Raises:
        HistosynthError: bad settings, arms or caps; a pool that is not one; a training source
            with a class the test pool lacks, or an arm without tiles of a test class; missing
            ImageNet weights (the message names the file and where it goes); an unusable
            stain reference; fewer training tiles than one batch; an `out` that holds an
            experiment without `resume`, or a resume whose settings or pools changed.
    """
    settings = settings or ClassifierSettings()
    options, seeds, resume, progress = settings.options, settings.seeds, settings.resume, settings.progress
    if seeds < 1:
        raise HistosynthError(f"--seeds {seeds}: must be at least 1")
    out = Path(out).expanduser()
    check_experiment_folder(out, resume)
    chosen = parse_arms(settings.arms)
    sources = {name: Path(folder) for name, folder in train.items()}
    caps = dict(settings.caps)
    for name, cap in caps.items():
        if name not in sources or cap < 1:
            raise HistosynthError(f"--cap {name}={cap}: needs a --train source of that name and N >= 1")
    weights = pretrained_weights(options.arch, settings.pretrained)
    test_pool = read_pool(test)
    classes = test_pool.classes
    if len(classes) < 2:
        raise HistosynthError(f"--test {test_pool.root}: only class {classes[0]}; a classifier needs two")
    pools = read_sources(sources, classes)
    members = {arm: arm_sources(arm, list(sources)) for arm in chosen}
    for arm, names in members.items():
        check_coverage(arm, names, pools, test_pool)
    normalizer = fit_normalizer(settings.stain_reference) if options.stain_normalize else None
    fingerprints = {
        name: pool_fingerprint(
            pool.root,
            [path for paths in pool.files.values() for path in paths],
            options.fingerprint,
            progress=progress,
        )
        for name, pool in pools.items()
    }

    seed_list = [options.seed + k for k in range(seeds)]
    designs = {
        (arm, seed): arm_data(arm, seed, members[arm], pools, classes, caps, options.valid_fraction)
        for seed in seed_list
        for arm in chosen
    }
    # each fit's length; refuses an arm smaller than one batch before any training
    totals = {key: total_steps(options, len(design.train)) for key, design in designs.items()}
    whole = dataclasses.replace(options, max_steps=None)  # the schedule's length, all epochs
    schedules = {key: total_steps(whole, len(design.train)) for key, design in designs.items()}

    runs = {}  # every resume is checked before any run trains
    for (arm, seed), design in designs.items():
        run_options = dataclasses.replace(options, seed=seed)
        name = f"{arm}-seed{seed}"
        record = _run_record(design, run_options, classes, fingerprints, caps, weights, normalizer)
        checkpoint = resume_checkpoint(
            out / CHECKPOINTS / name, out / MODELS / name, record, run_options, resume, totals[(arm, seed)]
        )
        runs[(arm, seed)] = (run_options, name, record, checkpoint)

    test_files = [path for paths in test_pool.files.values() for path in paths]
    truth = np.array([classes.index(label) for label, paths in test_pool.files.items() for _ in paths])
    every_file = [path for design in designs.values() for path, _ in design.train + design.valid]
    every_file += test_files
    workers = max(1, options.num_workers)
    prepared = prepare_tiles(every_file, normalizer, options.size, workers=workers, progress=progress)
    cached = prepared.arrays

    accuracy_rows, metric_rows, confusion, models = [], [], {}, []
    for (arm, seed), design in designs.items():
        run_options, name, record, checkpoint = runs[(arm, seed)]
        folder = out / MODELS / name
        fit = finished_fit(folder, checkpoint, totals[(arm, seed)])
        if fit is not None:
            logger.info("%s seed %d: finished before; its saved model is tested", arm, seed)
            model = load_classifier(folder)[0].to(default_device())
        else:
            saver = Checkpoints(
                out / CHECKPOINTS / name,
                run_options.checkpoint_every,
                run_options.keep_checkpoints,
                run_options.max_steps,
                record,
                checkpoint,
            )
            model, fit = _fit(design, cached, len(classes), run_options, weights, saver, progress)
            if rank_distrib() == 0:  # under `accelerate launch`, the main process writes
                _save_model(folder, model, run_options, classes, fit, normalizer, record)
                if fit.steps >= schedules[(arm, seed)] and not settings.keep_finished_checkpoints:
                    remove_checkpoints(out / CHECKPOINTS / name)
        predicted = predict(model, [cached[path] for path in test_files], run_options.batch_size)
        scores = run_scores(truth, predicted, classes)
        confusion[(arm, seed)] = scores["confusion"]
        accuracy_rows += _accuracy_rows(arm, seed, scores, classes)
        metric_rows.append(_metric_row(arm, seed, scores, design, fit))
        models.append(folder)
        logger.info(
            "%s seed %d: accuracy %.3f (epoch %s of %d kept)",
            arm,
            seed,
            scores["accuracy"],
            "none" if fit.best_epoch is None else fit.best_epoch + 1,
            options.epochs,
        )

    accuracy = pd.DataFrame(accuracy_rows)
    metrics = pd.DataFrame(metric_rows)
    comparison = compare_arms(metrics, chosen)
    labels = {arm: arm if arm == "real" else f"{arm} ({' + '.join(members[arm])})" for arm in chosen}
    record = {
        "settings": to_record(options),
        "arms": {arm: members[arm] for arm in chosen},
        "seeds": seed_list,
        "train": {name: str(folder) for name, folder in sources.items()},
        "caps": caps,
        "data_fingerprint": fingerprints,
        "test": str(test_pool.root),
        "classes": classes,
        "pretrained": str(weights) if weights else None,
        "stain": None if normalizer is None else normalizer.record(),
        "stain_passed_through": len(prepared.passed_through),
        "stain_tiles": len(cached),
    }
    files = []
    if rank_distrib() == 0:
        files = write_report(out, accuracy, metrics, comparison, confusion, classes, labels, record)
    return ClassifierResult(out, files, models, accuracy, metrics, comparison)


def _fit(design, cached, num_classes, options, weights, saver, progress) -> tuple[torch.nn.Module, FitRecord]:
    """Train one (arm, seed) run, checkpointed by `saver`; the model holds the kept weights."""
    with tempfile.TemporaryDirectory(prefix="histosynth-classifier-") as scratch:
        learn = build_learner(
            [(cached[path], label) for path, label in design.train],
            [(cached[path], label) for path, label in design.valid],
            num_classes,
            options,
            weights,
            Path(scratch),
        )
        saver.best_path = best_weights_path(learn)
        description = f"classifier {design.arm} seed {design.seed}"
        fit = fit_best(learn, options, description=description, progress=progress, cbs=[saver])
    return learn.model, fit


def _accuracy_rows(arm: str, seed: int, scores: dict, classes: Sequence[str]) -> list[dict[str, object]]:
    """Table 3's long rows of one run: accuracy per class and overall (`ALL`), with the test tiles."""
    rows = []
    for name in classes:
        accuracy = scores["per_class"].get(name, np.nan)
        rows.append({"arm": arm, "seed": seed, "class": name, "accuracy": accuracy, "n": scores["n"][name]})
    total = sum(scores["n"].values())
    return [
        *rows,
        {"arm": arm, "seed": seed, "class": ALL_CLASSES, "accuracy": scores["accuracy"], "n": total},
    ]


def _metric_row(arm: str, seed: int, scores: dict, design, fit) -> dict[str, object]:
    """One run's scores, tile counts, steps and the epoch kept (1-based; 0: none was validated)."""
    return {
        "arm": arm,
        "seed": seed,
        "accuracy": scores["accuracy"],
        "balanced_accuracy": scores["balanced_accuracy"],
        "macro_f1": scores["macro_f1"],
        "n_train": len(design.train),
        "n_valid": len(design.valid),
        "best_epoch": 0 if fit.best_epoch is None else fit.best_epoch + 1,
        "best_valid_loss": np.nan if fit.best_epoch is None else fit.valid_losses[fit.best_epoch],
        "last_valid_loss": fit.valid_losses[-1] if fit.valid_losses else np.nan,
        "steps": fit.steps,
    }


def _run_record(design, options, classes, fingerprints, caps, weights, normalizer) -> dict[str, Any]:
    """What identifies one (arm, seed) run: saved with its checkpoints, compared on `--resume`."""
    return {
        "kind": "classifier",
        "arm": design.arm,
        "seed": design.seed,
        "sources": design.sources,
        "settings": to_record(options),
        "classes": list(classes),
        "data_fingerprint": {name: fingerprints[name] for name in design.sources},
        "caps": {name: caps[name] for name in design.sources if name in caps},
        "pretrained": str(weights) if weights else None,
        "stain": None if normalizer is None else normalizer.record(),
    }


def _save_model(folder, model, options, classes, fit, normalizer, record) -> None:
    """Publish one run's model folder: weights, config, stain reference, sealed by histosynth.json."""

    def write(staging: Path) -> None:
        config = {
            "arch": options.arch,
            "classes": list(classes),
            "size": options.size,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "stain_normalize": normalizer is not None,
        }
        save_classifier(staging, model, config)
        if normalizer is not None:
            shutil.copyfile(normalizer.reference, staging / f"stain_reference{normalizer.reference.suffix}")
            atomic_write_text(staging / "stain.json", json.dumps(normalizer.record(), indent=2) + "\n")

    publish_model(folder, write)
    write_model_info(
        folder,
        kind="classifier",
        classes=classes,
        settings=to_record(options),
        fingerprint=record["data_fingerprint"],
        steps=fit.steps,
        extra={
            "arm": record["arm"],
            "seed": record["seed"],
            "sources": record["sources"],
            "best_epoch": None if fit.best_epoch is None else fit.best_epoch + 1,
            "valid_losses": fit.valid_losses,
            "train_losses": fit.train_losses,
            "pretrained": record["pretrained"],
            "caps": record["caps"],  # with the above, what `--resume` checks once the checkpoints are gone
            "stain": record["stain"],
        },
    )
