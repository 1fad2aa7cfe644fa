"""The run's two summaries: `reproduce.json` (what made every output) and `REPORT.md` (the paper).

`reproduce.json` gathers the step records of `.provenance/` (per output folder: the command,
its inputs' fingerprints, its files' sha256) under the histosynth version, the reproduce
command and its config, so a table can be traced to the data and settings that made it.
`REPORT.md` puts every table and figure of the paper as this run produced it beside the
paper's own numbers (`histosynth.workflow.paper_numbers`); classes the paper did not have show
a dash there, and the rating study (Fig. 3), which needs pathologists, is left as the command
that starts it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from histosynth import __version__
from histosynth.files import atomic_write_text
from histosynth.workflow import paper_numbers as paper
from histosynth.workflow.settings import GENERATORS
from histosynth.workflow.step import PROVENANCE

DASH = "–"


def write_reproduce_json(path: str | Path, config: dict[str, Any], command: str) -> Path:
    """Write the run's provenance: version, command, config and every step's record."""
    steps = {}
    for record in sorted(PROVENANCE.glob("*.json")):
        entry = json.loads(record.read_text(encoding="utf-8"))
        steps[entry["step"]] = entry
    document = {
        "histosynth_version": __version__,
        "command": command,
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config,
        "steps": steps,
    }
    atomic_write_text(path, json.dumps(document, indent=2) + "\n")
    return Path(path)


def write_report(path: str | Path, config: dict[str, Any], command: str) -> Path:
    """Write `REPORT.md` from the run's `results/` (paths relative to the run folder)."""
    titles = [GENERATORS[name]["title"] for name in config["generators"]]
    autoencoders = sorted({GENERATORS[name]["autoencoder"] for name in config["generators"]} - {None})
    sections = [
        _header(config, command),
        _msssim(autoencoders),
        _fid(titles, config["classes"]),
        "## Fig. 2: t-SNE of the feature network's embeddings\n\n![t-SNE](results/tsne/tsne.png)\n",
        _memorization(config["classes"]),
        _classifier(config),
        _study(titles),
    ]
    atomic_write_text(path, "\n".join(sections))
    return Path(path)


def _header(config: dict[str, Any], command: str) -> str:
    scale = (
        "The tiny preset: small models trained in minutes on a CPU. Its numbers show that the run "
        "works end to end, not what the paper's models reach."
        if config["preset"] == "tiny"
        else "The paper preset: the paper's model sizes and training lengths."
    )
    capped = (
        f" Every train command was capped at {config['max_steps']} steps." if config.get("max_steps") else ""
    )
    return (
        "# Reproduction report\n\n"
        f"Made by `{command}` with histosynth {__version__}: data `{config['data']}`, test "
        f"`{config['test']}`, {len(config['classes'])} classes, {config['per_class']} generated "
        f"images per class, {config['seeds']} classifier seed(s). {scale}{capped}\n\n"
        "Each table shows this run's values with the paper's (Niehues et al. 2024) beside them; "
        f"{DASH} where the paper has no such class or model. Every value comes from a file in "
        "`results/`, and `reproduce.json` says which command made each file from which inputs.\n"
    )


def _markdown(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def _paper_value(values: Sequence[float], name: str, digits: int) -> str:
    if name == "ALL":
        return f"{values[-1]:.{digits}f}" if len(values) > len(paper.PAPER_CLASSES) else DASH
    if name not in paper.PAPER_CLASSES:
        return DASH
    return f"{values[paper.PAPER_CLASSES.index(name)]:.{digits}f}"


def _msssim(autoencoders: list[str]) -> str:
    rows = []
    for kind in autoencoders:
        frame = pd.read_csv(f"results/msssim/{kind}/msssim.csv").set_index("class")
        overall = frame.loc["ALL"]
        mean, std = paper.MSSSIM[kind]
        rows.append(
            {
                "autoencoder": f"{kind.upper()}-f8",
                "this run": f"{100 * overall.msssim_mean:.1f} ± {100 * overall.msssim_std:.1f}",
                "paper": f"{mean:.1f} ± {std:.1f}",
                "images": int(overall.n),
            }
        )
    return "## Autoencoder reconstruction: MS-SSIM over the training set (%)\n\n" + _markdown(
        pd.DataFrame(rows)
    )


def _fid(titles: list[str], classes: list[str]) -> str:
    frame = pd.read_csv("results/fid/fid.csv")
    rows = []
    for title in titles:
        mine = frame[frame.source == title].set_index("class")
        rows.append({"model": title, **{name: f"{mine.fid[name]:.1f}" for name in classes}})
        published = paper.FID.get(title)
        rows.append(
            {
                "model": f"{title} (paper)",
                **{name: _paper_value(published, name, 1) if published else DASH for name in classes},
            }
        )
    return (
        "## Table 2: FID per class (generated against the training tiles of the class)\n\n"
        + _markdown(pd.DataFrame(rows))
        + "\nKID, bootstrap errors and image counts: `results/fid/fid.md`.\n"
    )


def _memorization(classes: list[str]) -> str:
    frame = pd.read_csv("results/memorization/memorization.csv")
    rows = []
    for (name, source), row in frame.set_index(["class", "source"]).iterrows():
        if name not in classes:
            continue
        published = paper.MEMORIZATION_ADI.get(source) if name == "ADI" else None
        rows.append(
            {
                "class": name,
                "source": source,
                "this run": f"{row['mean']:.2f}/{row['median']:.2f}/{row.p5:.2f}/{row.p95:.2f}",
                "paper": "/".join(f"{value:.2f}" for value in published) if published else DASH,
            }
        )
    verdicts = pd.read_csv("results/memorization/memorization_verdict.csv")
    verdict_rows = verdicts[["class", "source", "n_above", "n", "tail_p_adjusted", "verdict"]].copy()
    verdict_rows["tail_p_adjusted"] = verdict_rows.tail_p_adjusted.map(lambda p: f"{p:.3g}")
    return (
        "## Table 1 and Fig. 4: memorization (best Pearson r with any training tile, "
        "mean/median/p5/p95)\n\n"
        "The paper published the ADI row; `test` is the held-out pool, the baseline of chance "
        "similarity.\n\n"
        + _markdown(pd.DataFrame(rows))
        + "\nThe tail against the baseline (the paper's within-one-standard-deviation verdict "
        "cannot see a few copies among many):\n\n"
        + _markdown(verdict_rows)
        + "\n![memorization](results/memorization/memorization.png)\n"
    )


def _classifier(config: dict[str, Any]) -> str:
    frame = pd.read_csv("results/classifier/classifier_accuracy.csv")
    columns = [*config["classes"], "ALL"]
    rows = []
    for arm, group in frame.groupby("arm", sort=False):
        table = group.groupby("class").accuracy.agg(["mean", "std"])
        rows.append({"trained on": arm, **{name: _mean_std(table.loc[name]) for name in columns}})
        rows.append(
            {
                "trained on": f"{arm} (paper)",
                **{name: _paper_value(paper.ACCURACY[arm], name, 2) for name in columns},
            }
        )
    synthetic = " + ".join(GENERATORS[name]["title"] for name in config["generators"])
    return (
        "## Table 3: classifier accuracy on the test pool (mean ± std over seeds)\n\n"
        f"This run's synthetic arm trains on {synthetic}; the paper's on KLF8-DM's images alone.\n\n"
        + _markdown(pd.DataFrame(rows))
        + "\nThe arms' paired comparison across seeds: `results/classifier/classifier_comparison.md`.\n"
    )


def _mean_std(row: pd.Series) -> str:
    return f"{row['mean']:.2f}" if pd.isna(row["std"]) else f"{row['mean']:.2f} ± {row['std']:.2f}"


def _study(titles: list[str]) -> str:
    kappas = ", ".join(
        f"{name} {paper.FLEISS_KAPPA[name]:.2f}" for name in [*titles, "real"] if name in paper.FLEISS_KAPPA
    )
    return (
        "## Fig. 3: expert rating study\n\n"
        "Needs pathologists. The blinded study of this run's pools is `study/study.toml`: "
        "`histosynth study create study/study.toml --db study.db` makes it, `histosynth study "
        "raters` adds the raters, `histosynth rate` serves it, and `histosynth evaluate ratings` "
        f"computes the expert rating scores and Fleiss' kappa (the paper's mean kappa: {kappas}).\n"
    )
