"""Shared table writers: every evaluator table goes out as CSV, Markdown and LaTeX at once.

The CSV is the machine-readable truth (long format, full precision); the Markdown and LaTeX
renderings are for reading and for pasting into a paper, and may show a formatted version of
the same numbers (e.g. "0.12 ± 0.05 [0.01, 0.20]" cells in a class x model grid).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

MISSING = "–"
ALL_CLASSES = "ALL"  # the row over all classes, in every evaluator table
_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "–": "--",
    "−": "$-$",
    "κ": r"$\kappa$",
}


def write_table(
    frame: pd.DataFrame,
    out_dir: str | Path,
    stem: str,
    display: pd.DataFrame | None = None,
    caption: str = "",
    digits: int = 3,
) -> list[Path]:
    """Write `stem.csv`, `stem.md` and `stem.tex` into `out_dir`.

    Args:
        frame: the table; written to CSV as is (no index).
        out_dir: an existing folder.
        stem: file name without suffix.
        display: what the Markdown and LaTeX files show instead of `frame` (e.g. formatted
            estimates); None renders `frame` with floats rounded to `digits`.
        caption: LaTeX caption (and a Markdown line above the table); empty for none.
        digits: decimals for floats in the renderings.

    Returns:
        The three paths written, in the order csv, md, tex.
    """
    out_dir = Path(out_dir)
    text = format_frame(display if display is not None else frame, digits)
    paths = [out_dir / f"{stem}.csv", out_dir / f"{stem}.md", out_dir / f"{stem}.tex"]
    frame.to_csv(paths[0], index=False)
    paths[1].write_text(markdown_table(text, caption), encoding="utf-8")
    paths[2].write_text(latex_table(text, caption, label=f"tab:{stem}"), encoding="utf-8")
    return paths


def format_frame(frame: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Every cell as the text the renderings show (`format_cell`), column names as strings."""
    text = frame.apply(lambda column: column.map(lambda value: format_cell(value, digits)))
    text.columns = [str(name) for name in frame.columns]
    return text


def format_cell(value: object, digits: int = 3) -> str:
    """Render one value: floats rounded (minus sign kept for -0.000), NaN/None as a dash."""
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}"
    return str(value)


def format_estimate(
    mean: float,
    std: float | None = None,
    low: float | None = None,
    high: float | None = None,
    digits: int = 2,
) -> str:
    """`mean ± std [low, high]`, leaving out the parts that are None or NaN."""
    if mean is None or not math.isfinite(mean):
        return MISSING
    text = f"{mean:.{digits}f}"
    if std is not None and math.isfinite(std):
        text += f" ± {std:.{digits}f}"
    if low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text


def markdown_table(text: pd.DataFrame, caption: str = "") -> str:
    """A GitHub-flavoured Markdown table of string cells (pipes escaped)."""

    def row(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    lines = [caption, ""] if caption else []
    lines.append(row(list(text.columns)))
    lines.append("|" + "|".join("---" for _ in text.columns) + "|")
    lines.extend(row(list(values)) for values in text.itertuples(index=False, name=None))
    return "\n".join(lines) + "\n"


def latex_table(text: pd.DataFrame, caption: str = "", label: str = "") -> str:
    """A booktabs LaTeX table of string cells, special characters escaped."""
    columns = "l" * len(text.columns)
    lines = [r"\begin{table}[ht]", r"\centering"]
    if caption:
        lines.append(rf"\caption{{{latex_escape(caption)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines += [rf"\begin{{tabular}}{{{columns}}}", r"\toprule"]
    lines.append(" & ".join(latex_escape(name) for name in text.columns) + r" \\")
    lines.append(r"\midrule")
    lines.extend(
        " & ".join(latex_escape(cell) for cell in values) + r" \\"
        for values in text.itertuples(index=False, name=None)
    )
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters and typeset ±, en dash, minus and kappa."""
    return "".join(_LATEX_SPECIALS.get(char, char) for char in text)
