"""The downstream experiment's outputs: Table 3, the metrics, the comparison, confusion matrices.

Everything goes out through the core's table writer (CSV for machines, Markdown and LaTeX for
reading) inside one staged output folder, so a failed run leaves the folder as it was:

- `classifier_accuracy.csv`: one row per arm, seed and class (`ALL` for overall accuracy) with
  the accuracy and the test tiles; its `.md` and `.tex` show the paper's Table 3 (a row per arm,
  a column per class and `ALL`) with mean ± std over seeds, plus balanced accuracy and macro F1;
- `classifier_metrics`: per run, accuracy, balanced accuracy, macro F1 and the epoch kept;
- `classifier_comparison`: the paired sign-flip test of every two arms (`trainer.classifier.stats`);
- `classifier_confusion.csv` (arm, seed, true, predicted, count) and, per arm, the confusion
  matrix summed over seeds as `classifier_confusion_<arm>.png` and `.pdf`;
- `classifier.json`: the settings, sources, arms, seeds, stain reference and pass-through count.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from histosynth.files import staged_output
from histosynth.tables import ALL_CLASSES, format_estimate, write_table
from trainer.classifier.arms import ARMS

TABLE_STEMS = ("classifier_accuracy", "classifier_metrics", "classifier_comparison")
OWNED = (
    [f"{stem}{suffix}" for stem in TABLE_STEMS for suffix in (".csv", ".md", ".tex")]
    + ["classifier_confusion.csv", "classifier.json"]
    + [f"classifier_confusion_{arm}{suffix}" for arm in ARMS for suffix in (".png", ".pdf")]
)


def write_report(
    out: Path,
    accuracy: pd.DataFrame,
    metrics: pd.DataFrame,
    comparison: pd.DataFrame,
    confusion: dict[tuple[str, int], np.ndarray],
    classes: Sequence[str],
    arm_labels: dict[str, str],
    record: dict[str, object],
) -> list[Path]:
    """Write every table and figure into `out`, all or nothing.

    Args:
        out: the output folder (model folders under `out/models/` are left alone).
        accuracy: long rows (arm, seed, class, accuracy, n), `ALL` included.
        metrics: one row per run (arm, seed, accuracy, balanced_accuracy, macro_f1, ...).
        comparison: `trainer.classifier.stats.compare_arms`.
        confusion: the confusion matrix (rows true) of each (arm, seed).
        classes: label order.
        arm_labels: the row label of each arm in Table 3 (e.g. "combined (real + KLF8-DM)").
        record: the experiment's description for `classifier.json`.

    Returns:
        The files written.
    """
    with staged_output(out, OWNED) as staging:
        seeds = metrics["seed"].nunique()
        write_table(
            accuracy,
            staging,
            "classifier_accuracy",
            display=table3(accuracy, metrics, classes, arm_labels),
            caption=f"Test accuracy per class (mean ± std over {seeds} seeds), as the paper's Table 3",
        )
        write_table(metrics, staging, "classifier_metrics", caption="Scores of every run")
        write_table(
            comparison,
            staging,
            "classifier_comparison",
            caption="Paired comparison of arms across seeds (exact sign-flip test, Holm-adjusted)",
            digits=4,
        )
        rows = [
            {"arm": arm, "seed": seed, "true": truth, "predicted": guess, "count": int(matrix[i, j])}
            for (arm, seed), matrix in confusion.items()
            for i, truth in enumerate(classes)
            for j, guess in enumerate(classes)
        ]
        pd.DataFrame(rows).to_csv(staging / "classifier_confusion.csv", index=False)
        for arm in dict.fromkeys(arm for arm, _ in confusion):
            total = sum(matrix for (name, _), matrix in confusion.items() if name == arm)
            confusion_figure(total, classes, f"{arm_labels[arm]}: {seeds} seeds", staging, arm)
        (staging / "classifier.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        written = sorted(path.name for path in staging.iterdir())
    return [out / name for name in written]


def table3(
    accuracy: pd.DataFrame, metrics: pd.DataFrame, classes: Sequence[str], arm_labels: dict[str, str]
) -> pd.DataFrame:
    """Table 3's layout: a row per arm, mean ± std over seeds per class, overall and two more scores."""
    rows = []
    for arm, label in arm_labels.items():
        row = {"trained on": label}
        for name in [*classes, ALL_CLASSES]:
            values = accuracy[(accuracy["arm"] == arm) & (accuracy["class"] == name)]["accuracy"]
            row[name] = _estimate(values)
        runs = metrics[metrics["arm"] == arm]
        row["balanced accuracy"] = _estimate(runs["balanced_accuracy"])
        row["macro F1"] = _estimate(runs["macro_f1"])
        rows.append(row)
    return pd.DataFrame(rows)


def confusion_figure(matrix: np.ndarray, classes: Sequence[str], title: str, folder: Path, arm: str) -> None:
    """The confusion matrix, rows normalised to the share of each true class, counts written in."""
    from matplotlib.figure import Figure

    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(3.5, 1.0 + 0.55 * len(classes))
    figure = Figure(figsize=(size + 1.5, size))
    axes = figure.subplots()
    image = axes.imshow(shares, vmin=0.0, vmax=1.0, cmap="Blues")
    axes.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axes.set_yticks(range(len(classes)), classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title, fontsize=9)
    for i in range(len(classes)):
        for j in range(len(classes)):
            colour = "white" if shares[i, j] > 0.5 else "black"
            axes.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=7, color=colour)
    figure.colorbar(image, ax=axes, label="share of the true class")
    figure.tight_layout()
    for suffix in (".png", ".pdf"):
        figure.savefig(folder / f"classifier_confusion_{arm}{suffix}", dpi=150)


def _estimate(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return format_estimate(float("nan"))
    std = float(values.std(ddof=1)) if len(values) > 1 else None
    return format_estimate(float(values.mean()), std)
