"""Files of the memorization audit: tables, the paper's Fig. 4, and a gallery of closest pairs.

Written into the output folder:

* `memorization.csv`: the paper's table (class, source, mean, std, median, p5, p95, n);
  `memorization_verdict.csv`: thresholds, counts, tests (raw and Holm-adjusted p-values) and
  verdicts (with a baseline);
  `memorization_tiles.csv`: every audited tile with its closest training tile and transform.
* `memorization.md`, `memorization.tex`: the same tables for reading and for a paper.
* `memorization.png`, `memorization.pdf`: the best correlations per class and source,
  with mean +- std bands (the paper's Fig. 4) and the baseline thresholds.
* `memorization_gallery.png` and `.html`: the top-k closest pairs per source, the training
  tile turned by the inverse of the matching transform so that it lines up with the tile
  beside it, for a person to judge whether they are the same tissue.

Everything is rendered into a staging folder and moved into place at the end
(`histosynth.files.staged_output`), so a failure never leaves a half-written report, and a
file of an earlier run that this run does not write (a verdict from a run with a baseline)
is removed rather than left to contradict the new one.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from evaluator.memorization.audit import MemorizationResult, MemorizationSettings, audit_memorization
from evaluator.memorization.search import TRANSFORMS, invert_transform
from histosynth.errors import HistosynthError
from histosynth.files import staged_output
from histosynth.images import load_rgb
from histosynth.tables import ALL_CLASSES, format_frame, latex_table, markdown_table

_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
_BASELINE_COLOR = "#555555"
REPORT_FILES = (
    "memorization.csv",
    "memorization_tiles.csv",
    "memorization_verdict.csv",
    "memorization.md",
    "memorization.tex",
    "memorization.png",
    "memorization.pdf",
    "memorization_gallery.png",
    "memorization_gallery.html",
)
"""Every file `write_report` may write; those a run does not write are removed from `out`."""


def evaluate_memorization(
    train: str | Path,
    pools: Mapping[str, str | Path],
    out: str | Path,
    baseline: str | Path | None = None,
    settings: MemorizationSettings | None = None,
    *,
    top_k: int = 8,
) -> MemorizationResult:
    """Audit the pools and write the report into `out` (`histosynth evaluate memorization`).

    Everything is computed before anything is written, so bad input leaves `out` untouched.

    Args:
        train: the training pool (`<train>/<CLASS>/<tile>`).
        pools: generated pools by source name.
        out: the output folder (created); see `write_report` for the files.
        baseline: held-out real tiles; without it there is no verdict and no flags.
        settings: see `MemorizationSettings`; None uses its defaults (the paper's check).
        top_k: closest pairs per source shown in the gallery.

    Returns:
        The audit's result (see `audit_memorization`).

    Raises:
        HistosynthError: top_k below 1, or see `audit_memorization` and `write_report`.
        PoolError, ImageError: see `audit_memorization`.
    """
    if top_k < 1:
        raise HistosynthError(f"top_k must be at least 1, got {top_k}")
    result = audit_memorization(train, pools, baseline, settings)
    write_report(result, out, top_k=top_k)
    return result


def write_report(result: MemorizationResult, out: str | Path, top_k: int = 8) -> list[Path]:
    """Write the audit's CSV, Markdown, LaTeX, figure and gallery files into `out`.

    Args:
        result: what `audit_memorization` returned.
        out: the output folder; created if missing. Files of the same names are replaced
            and `REPORT_FILES` this run does not write are removed.
        top_k: closest pairs per source in the gallery.

    Returns:
        The paths written, in a stable order.

    Raises:
        HistosynthError: `out` exists and is not a folder, or cannot be written.
    """
    with staged_output(out, owned=REPORT_FILES) as staging:
        names = _render(result, staging, top_k)
    return [Path(out).expanduser() / name for name in names]


def _render(result: MemorizationResult, folder: Path, top_k: int) -> list[str]:
    """Write every file into `folder`; return the names written, in `REPORT_FILES` order."""
    result.summary.to_csv(folder / "memorization.csv", index=False)
    result.tiles.to_csv(folder / "memorization_tiles.csv", index=False)
    if result.verdict is not None:
        result.verdict.to_csv(folder / "memorization_verdict.csv", index=False)
    (folder / "memorization.md").write_text(markdown_report(result), encoding="utf-8")
    (folder / "memorization.tex").write_text(latex_report(result), encoding="utf-8")
    figure = distribution_figure(result)
    figure.savefig(folder / "memorization.png", dpi=150)
    figure.savefig(folder / "memorization.pdf")
    pairs = closest_pairs(result, top_k)
    gallery = gallery_figure(pairs, result.size)
    gallery.savefig(folder / "memorization_gallery.png", dpi=100)
    (folder / "memorization_gallery.html").write_text(gallery_html(pairs, result), encoding="utf-8")
    return [name for name in REPORT_FILES if (folder / name).is_file()]


def paper_table(result: MemorizationResult) -> pd.DataFrame:
    """The paper's layout: a row per class, a column per source, cells `mean/median/p5/p95`."""
    sources = [*result.sources, *([result.baseline] if result.baseline else [])]
    table = pd.DataFrame(index=pd.Index(result.classes, name="class"), columns=sources, dtype=object)
    for row in result.summary.itertuples(index=False):
        table.loc[row[0], row[1]] = f"{row.mean:.2f}/{row.median:.2f}/{row.p5:.2f}/{row.p95:.2f}"
    return table.fillna("").reset_index()


def _verdict_display(result: MemorizationResult) -> pd.DataFrame | None:
    if result.verdict is None:
        return None
    shown = result.verdict.copy()
    shown["threshold"] = shown["threshold"].map(lambda v: "" if np.isnan(v) else f"{v:.3f}")
    shown["expected_above"] = shown["expected_above"].map(lambda v: f"{v:.2f}")
    for column in (
        "tail_p",
        "tail_p_adjusted",
        "binom_p",
        "exact_p",
        "exact_p_adjusted",
        "mwu_p",
        "mwu_p_adjusted",
    ):
        shown[column] = shown[column].map(lambda v: f"{v:.3g}")
    for column in ("tail_shape", "tail_gof_ks", "tail_gof_p"):
        shown[column] = shown[column].map(lambda v: "" if np.isnan(v) else f"{v:.3g}")
    shown["tail_tile"] = shown["tail_tile"].map(lambda path: Path(path).name)
    shown["mwu_u"] = shown["mwu_u"].map(lambda v: f"{v:.0f}")
    return shown.drop(columns="correction")  # too wide for a table; `_correction_note` says it


def _correction_note(result: MemorizationResult) -> str:
    """Which p-values the verdict reads: Holm-adjusted, all tests of the table in one family."""
    tests = 3 * len(result.verdict)
    return (
        f"Multiple testing: `tail_p_adjusted`, `exact_p_adjusted` and `mwu_p_adjusted` are Holm-adjusted "
        f"as one family of all {tests} tests (tail, count and shift tests of every row, {ALL_CLASSES} "
        f"rows included), so the verdict of the audit as a whole errs with probability at most alpha "
        f"{result.alpha}. Tail model: a GEV of the baseline's Fisher z per class (shape capped at Gumbel), "
        "checked by `tail_gof_ks` and `tail_gof_p` (parametric bootstrap; small means do not trust "
        "that class's tail p-values)."
    )


def _settings(result: MemorizationResult) -> str:
    size = "native size" if result.size is None else f"{result.size}x{result.size} px"
    transforms = sorted(set(result.tiles["transform"]))
    rule = f"threshold rule `{result.threshold}`, alpha {result.alpha}" if result.baseline else "no baseline"
    return f"Grayscale (ITU-R 601 luma) at {size}; transforms seen: {', '.join(transforms)}; {rule}."


def markdown_report(result: MemorizationResult) -> str:
    """The tables as Markdown: the paper's layout, the long summary and the verdict."""
    parts = [
        "# Memorization audit",
        "",
        _settings(result),
        "",
        "Best Pearson correlation with any training tile, mean/median/p5/p95:",
        "",
        markdown_table(format_frame(paper_table(result))),
        markdown_table(format_frame(result.summary)),
    ]
    verdict = _verdict_display(result)
    if verdict is not None:
        parts += [
            "",
            "## Verdict against the baseline",
            "",
            _correction_note(result),
            "",
            markdown_table(format_frame(verdict)),
        ]
    return "\n".join(parts)


def latex_report(result: MemorizationResult) -> str:
    """The tables as booktabs LaTeX tables, the settings and the verdict's note as comments."""
    parts = [
        "% Memorization audit: " + _settings(result).replace("`", ""),
        latex_table(format_frame(paper_table(result)), "Best Pearson correlation with any training tile"),
        latex_table(format_frame(result.summary), "Best correlation per class and source"),
    ]
    verdict = _verdict_display(result)
    if verdict is not None:
        parts += [
            "% " + _correction_note(result).replace("`", ""),
            latex_table(format_frame(verdict), "Verdict against the baseline"),
        ]
    return "\n".join(parts)


def distribution_figure(result: MemorizationResult) -> Figure:
    """The paper's Fig. 4: best r per tile by class and source, with mean +- std bands.

    Per class, each source has a shaded +-1 std band around its mean (a bar) and its tiles
    as jittered dots beside it; flagged tiles are ringed and the baseline's flagging
    thresholds are black bars across the class.
    """
    sources = [*result.sources, *([result.baseline] if result.baseline else [])]
    positions = np.arange(len(result.classes))
    width = 0.8 / len(sources)
    figure = Figure(figsize=(max(6.0, 0.9 * len(result.classes) + 3.0), 4.5), layout="constrained")
    axes = figure.add_subplot()
    rng = np.random.default_rng(0)
    class_index = {name: i for i, name in enumerate(result.classes)}
    for index, source in enumerate(sources):
        color = _BASELINE_COLOR if source == result.baseline else _COLORS[index % len(_COLORS)]
        rows = result.summary[result.summary["source"] == source].set_index("class").reindex(result.classes)
        centres = positions - 0.4 + width * (index + 0.5)
        mean = rows["mean"].to_numpy(dtype=float)
        std = np.nan_to_num(rows["std"].to_numpy(dtype=float))
        axes.bar(centres, 2 * std, bottom=mean - std, width=0.9 * width, color=color, alpha=0.2, label=source)
        axes.hlines(mean, centres - 0.45 * width, centres + 0.45 * width, colors=color, linewidth=2)
        tiles = result.tiles[result.tiles["source"] == source]
        x = centres[tiles["class"].map(class_index).to_numpy(dtype=int)]
        x = x + rng.uniform(-0.3 * width, 0.3 * width, len(x))
        axes.scatter(x, tiles["r"], s=5, color=color, alpha=0.4, linewidths=0)
        hot = tiles["flagged"].to_numpy(dtype=bool)
        if hot.any():
            axes.scatter(x[hot], tiles["r"][hot], s=40, facecolors="none", edgecolors=color, linewidths=1.2)
    if result.verdict is not None:
        limits = result.verdict.drop_duplicates("class").set_index("class")["threshold"]
        levels = [limits.get(name, np.nan) for name in result.classes]
        axes.hlines(levels, positions - 0.42, positions + 0.42, colors="black", label="baseline threshold")
    axes.set_xticks(positions, result.classes)
    axes.set_ylabel("highest correlation with a training tile")
    axes.set_xlabel("class")
    axes.set_ylim(min(0.0, float(result.tiles["r"].min()) - 0.05), 1.02)
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), title="mean +- std")
    return figure


def closest_pairs(result: MemorizationResult, top_k: int) -> dict[str, pd.DataFrame]:
    """The `top_k` tiles of highest r per source (baseline included), best first."""
    sources = [*result.sources, *([result.baseline] if result.baseline else [])]
    return {
        source: result.tiles[result.tiles["source"] == source].nlargest(top_k, "r", keep="first")
        for source in sources
    }


def aligned_pair(row: pd.Series, size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """A row of `result.tiles` as RGB images: the tile, and its training match turned by the
    inverse of the matching transform so that the two line up pixel for pixel."""
    generated = load_rgb(row["tile"], size)
    training = invert_transform(load_rgb(row["train_tile"], size), TRANSFORMS.index(row["transform"]))
    return generated, np.ascontiguousarray(training)


def gallery_figure(pairs: dict[str, pd.DataFrame], size: int | None) -> Figure:
    """A contact sheet: per source two columns (tile | aligned training tile), a row per rank."""
    rows = max(1, max(len(frame) for frame in pairs.values()))
    columns = 2 * len(pairs)
    figure = Figure(figsize=(1.6 * columns, 1.75 * rows + 0.4), layout="constrained")
    grid = figure.add_gridspec(rows, columns)
    for block, (source, frame) in enumerate(pairs.items()):
        for rank in range(rows):
            left = figure.add_subplot(grid[rank, 2 * block])
            right = figure.add_subplot(grid[rank, 2 * block + 1])
            for axes in (left, right):
                axes.set_axis_off()
            if rank >= len(frame):
                continue
            row = frame.iloc[rank]
            generated, training = aligned_pair(row, size)
            left.imshow(generated)
            right.imshow(training)
            mark = " !" if row["flagged"] else ""
            left.set_title(f"{source} {row['class']}{mark}", fontsize=6)
            right.set_title(f"r={row['r']:.3f} {row['transform']}", fontsize=6)
    figure.suptitle("closest pairs: tile | training tile aligned (! = above threshold)", fontsize=8)
    return figure


def _png_data_uri(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def gallery_html(pairs: dict[str, pd.DataFrame], result: MemorizationResult) -> str:
    """A self-contained HTML page of the closest pairs, images embedded, paths and r beside them."""
    sections = []
    for source, frame in pairs.items():
        rows = []
        for _, row in frame.iterrows():
            generated, training = aligned_pair(row, result.size)
            flag = "<b>above threshold</b>" if row["flagged"] else ""
            rows.append(
                "<tr>"
                f'<td><img src="{_png_data_uri(generated)}" alt="tile"></td>'
                f'<td><img src="{_png_data_uri(training)}" alt="training tile"></td>'
                f"<td>r = {row['r']:.4f}<br>{html.escape(row['transform'])}<br>{flag}<br>"
                f"<small>{html.escape(row['tile'])}<br>{html.escape(row['train_tile'])}</small></td>"
                "</tr>"
            )
        sections.append(
            f"<h2>{html.escape(source)}</h2>\n<table>\n"
            "<tr><th>tile</th><th>training tile (aligned)</th><th>match</th></tr>\n"
            + "\n".join(rows)
            + "\n</table>"
        )
    return (
        "<!doctype html>\n<html><head><meta charset='utf-8'><title>Memorization audit: closest pairs</title>"
        "<style>body{font-family:sans-serif} img{width:256px;image-rendering:pixelated} "
        "td{vertical-align:top;padding:4px}</style></head><body>\n"
        f"<h1>Closest pairs</h1><p>{html.escape(_settings(result))} The training tile is shown under the "
        "inverse of the matching transform, so it lines up with the tile on its left.</p>\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )
