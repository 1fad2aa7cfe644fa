"""What a `histosynth reproduce` run is: its settings, checked before anything runs.

The settings become the workflow's config (`reproduce.config.json` in the out folder), the one
file the Snakefile reads. A run's out folder belongs to one config: a second run with other
data, another preset or other generators is refused rather than mixed with the first one's
models and tables; changing only how it runs (cores, executor, profile) is not a new run.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from histosynth.errors import HistosynthError
from histosynth.pools import read_pool

CONFIG_NAME = "reproduce.config.json"
PRESETS = ("tiny", "paper")
EXECUTORS = ("local", "slurm")
# the paper's four generators: which train command makes each (and on which autoencoder)
GENERATORS = {
    "klf8": {"train": "ldm", "autoencoder": "kl", "title": "KLF8-DM"},
    "vqf8": {"train": "ldm", "autoencoder": "vq", "title": "VQF8-DM"},
    "sd": {"train": "sd-finetune", "autoencoder": None, "title": "SD v1.4 fine-tuned"},
    "stylegan2": {"train": "stylegan2", "autoencoder": None, "title": "styleGAN2"},
}
# the keys that make two runs the same run; the others only say how it runs
RUN_KEYS = ("data", "test", "preset", "generators", "sd_base", "per_class", "seeds", "max_steps")


@dataclass(frozen=True)
class ReproduceSettings:
    """A `histosynth reproduce` run; each field is the CLI option of that name.

    Attributes:
        data: the training pool `<pool>/<CLASS>/<image>` (NCT-CRC-HE-100K in the paper).
        test: the held-out pool with the same classes (CRC-VAL-HE-7K): the classifier's test
            set and the memorization audit's baseline of chance similarity.
        out: the run's folder: models/, pools/, results/, study/, reproduce.json, REPORT.md.
        preset: `tiny` (a small real experiment on a CPU, minutes) or `paper` (the paper's
            sizes, days on GPUs).
        generators: of `klf8`, `vqf8`, `sd`, `stylegan2`.
        sd_base: a local diffusers Stable Diffusion v1.4 folder, needed by `sd`.
        per_class: images per class in each generated pool (the paper: 10,000).
        seeds: repeats of every classifier arm.
        max_steps: cap every train command's optimizer steps (plumbing checks only).
        extractor: FID and t-SNE features, `inception` or `module:callable`.
        inception_weights: clean-fid's Inception weights (default: the histosynth cache).
        gpus: GPUs per training job (default: 1 in the paper preset, 0 in tiny); with more
            than 1, the train commands run under `accelerate launch`. The local executor runs
            one such job at a time.
        cores: CPU cores Snakemake may use at once (local executor).
        executor: `local` or `slurm` (snakemake-executor-plugin-slurm, one job per rule).
        profile: a Snakemake profile folder (a SLURM account, partitions, GPUs per rule).
        dry_run: list the jobs that would run; write nothing.
        progress: show Snakemake's progress (None: when stderr is a terminal).
    """

    data: Path
    test: Path
    out: Path
    preset: str = "tiny"
    generators: tuple[str, ...] = ("klf8", "vqf8", "sd", "stylegan2")
    sd_base: Path | None = None
    per_class: int | None = None
    seeds: int = 3
    max_steps: int | None = None
    extractor: str = "inception"
    inception_weights: Path | None = None
    gpus: int | None = None
    cores: int = 1
    executor: str = "local"
    profile: Path | None = None
    dry_run: bool = False
    progress: bool | None = None


def check_settings(settings: ReproduceSettings) -> dict[str, Any]:
    """The run's workflow config, once every setting is checked.

    `sd` without `sd_base` is left out of the default generators with one logged line; named
    explicitly, it is refused.

    Raises:
        HistosynthError: one line naming the setting: data or test not a pool, their classes
            differ, an unknown generator or preset or executor, `sd` without `sd_base`, a
            count below 1, or an out folder holding another run's config.
    """
    if settings.preset not in PRESETS:
        raise HistosynthError(f"--preset {settings.preset!r}: expected one of {', '.join(PRESETS)}")
    if settings.executor not in EXECUTORS:
        raise HistosynthError(f"--executor {settings.executor!r}: expected one of {', '.join(EXECUTORS)}")
    unknown = [name for name in settings.generators if name not in GENERATORS]
    if unknown or not settings.generators:
        raise HistosynthError(
            f"--generators {','.join(settings.generators)!r}: expected some of {', '.join(GENERATORS)}"
        )
    if "sd" in settings.generators and settings.sd_base is None:
        raise HistosynthError(
            "--generators sd: fine-tuning Stable Diffusion needs --sd-base DIR (v1.4, local)"
        )
    if settings.gpus is not None and settings.gpus < 0:
        raise HistosynthError(f"--gpus {settings.gpus}: must be 0 or more")
    for name, value in (
        ("--per-class", settings.per_class),
        ("--seeds", settings.seeds),
        ("--max-steps", settings.max_steps),
        ("--cores", settings.cores),
    ):
        if value is not None and value < 1:
            raise HistosynthError(f"{name} {value}: must be at least 1")
    data, test = read_pool(settings.data), read_pool(settings.test)
    if data.classes != test.classes:
        raise HistosynthError(
            f"--test {settings.test}: classes {', '.join(test.classes)} differ from the data's "
            f"({', '.join(data.classes)})"
        )
    if settings.sd_base is not None and not (Path(settings.sd_base) / "model_index.json").is_file():
        raise HistosynthError(f"--sd-base {settings.sd_base}: no model_index.json (a diffusers folder)")
    config = {
        "data": str(data.root.resolve()),
        "test": str(test.root.resolve()),
        "classes": data.classes,
        "preset": settings.preset,
        "generators": list(settings.generators),
        "sd_base": str(Path(settings.sd_base).resolve()) if settings.sd_base else None,
        "per_class": settings.per_class or (10_000 if settings.preset == "paper" else 16),
        "seeds": settings.seeds,
        "max_steps": settings.max_steps,
        "extractor": settings.extractor,
        "inception_weights": str(Path(settings.inception_weights).resolve())
        if settings.inception_weights
        else None,
        "python": sys.executable,
        "gpus_per_job": settings.gpus if settings.gpus is not None else int(settings.preset == "paper"),
        "command": command_line(settings),
    }
    _check_out_folder(Path(settings.out), config)
    return config


def command_line(settings: ReproduceSettings) -> str:
    """The `histosynth reproduce` command that runs `settings` (what `reproduce.json` records)."""
    options: list[tuple[str, Any]] = [
        ("--data", settings.data),
        ("--test", settings.test),
        ("--out", settings.out),
        ("--preset", settings.preset),
        ("--generators", ",".join(settings.generators)),
        ("--sd-base", settings.sd_base),
        ("--per-class", settings.per_class),
        ("--seeds", settings.seeds),
        ("--max-steps", settings.max_steps),
        ("--extractor", settings.extractor),
        ("--inception-weights", settings.inception_weights),
        ("--gpus", settings.gpus),
        ("--cores", settings.cores),
        ("--executor", settings.executor),
        ("--profile", settings.profile),
    ]
    words = ["histosynth", "reproduce"]
    for flag, value in options:
        if value is not None:
            words += [flag, str(value)]
    return shlex.join(words)


def default_generators(sd_base: Path | None) -> tuple[str, ...]:
    """All four generators, or the three that need no Stable Diffusion weights."""
    return tuple(name for name in GENERATORS if name != "sd" or sd_base is not None)


def _check_out_folder(out: Path, config: dict[str, Any]) -> None:
    if out.exists() and not out.is_dir():
        raise HistosynthError(f"--out {out}: exists and is not a folder")
    written = out / CONFIG_NAME
    if not written.is_file():
        if out.is_dir() and any(out.iterdir()):
            raise HistosynthError(
                f"--out {out}: holds files of something else; choose an empty or new folder"
            )
        return
    try:
        previous = json.loads(written.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise HistosynthError(f"{written}: unreadable ({error})") from error
    differ = [key for key in RUN_KEYS if previous.get(key) != config[key]]
    if differ:
        raise HistosynthError(
            f"--out {out}: holds another run ({', '.join(differ)} differ, see {CONFIG_NAME}); "
            "choose another --out"
        )
