"""The paper's Fig. 3B: expert rating scores per class, one bar per generator, std error bars.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas directly, so importing
or calling this module never touches pyplot's global state or the user's backend choice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from histosynth.tables import ALL_CLASSES


def expert_score_figure(scores: pd.DataFrame, with_overall: bool = True, note: str = "") -> Figure:
    """Grouped bar chart of `expert_scores`: classes on x, one bar per generator, error bar = std.

    Args:
        scores: the expert score table (class, source, score_mean, score_std).
        with_overall: add each generator's `ALL` score as a last group, set apart.
        note: a warning drawn as the figure's title (say, that some raters are simulated).

    Returns:
        The figure (with an Agg canvas attached), ready for `save_figure`.
    """
    classes = sorted(set(scores["class"]) - {ALL_CLASSES})
    if with_overall and (scores["class"] == ALL_CLASSES).any():
        classes.append(ALL_CLASSES)
    sources = sorted(set(scores["source"]))
    means = scores.pivot(index="class", columns="source", values="score_mean").reindex(
        index=classes, columns=sources
    )
    stds = scores.pivot(index="class", columns="source", values="score_std").reindex(
        index=classes, columns=sources
    )

    figure = Figure(figsize=(max(6.0, 0.9 * len(classes) + 3.0), 3.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = np.arange(len(classes), dtype=float)
    if classes and classes[-1] == ALL_CLASSES:
        positions[-1] += 0.5
    width = 0.8 / max(1, len(sources))
    for index, source in enumerate(sources):
        offset = (index - (len(sources) - 1) / 2) * width
        axes.bar(
            positions + offset,
            means[source].to_numpy(dtype=float),
            width,
            yerr=np.nan_to_num(stds[source].to_numpy(dtype=float)),
            capsize=2,
            label=source,
        )
    axes.axhline(0.0, color="black", linewidth=0.8)
    axes.set_xticks(positions, [("all classes" if name == ALL_CLASSES else name) for name in classes])
    axes.set_ylabel("expert rating score")
    axes.set_title("Generated tiles called real, relative to real tiles (mean ± std over raters)", fontsize=9)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    if note:
        figure.suptitle(note, color="firebrick", fontsize=10, fontweight="bold")
    return figure


def save_figure(figure: Figure, out_dir: str | Path, stem: str, dpi: int = 200) -> list[Path]:
    """Write the figure as `stem.png` and `stem.pdf` into an existing folder."""
    paths = [Path(out_dir) / f"{stem}.png", Path(out_dir) / f"{stem}.pdf"]
    for path in paths:
        figure.savefig(path, dpi=dpi)
    return paths
