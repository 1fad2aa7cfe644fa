"""Rendering pool metrics as the paper lays them out, and writing output folders all-or-nothing.

Table 2 of Niehues et al. has one row per generator and one column per tissue class. The
helpers here pivot the long CSV tables of `fid` and `msssim` into that shape for Markdown and
LaTeX, and write every output file through a temporary name and a rename, only after all
results exist, so a failed run never leaves a half-written folder behind.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from evaluator.tables import latex_escape
from histosynth.errors import HistosynthError

ALL_CLASSES = "ALL"


def format_mean_std(mean: float, std: float | None, digits: int, latex: bool = False) -> str:
    """`12.3 ± 0.4`; just `12.3` when the spread is unknown (NaN or None)."""
    if pd.isna(mean):
        return "–"
    if std is None or pd.isna(std):
        return f"{mean:.{digits}f}"
    plus_minus = r" $\pm$ " if latex else " ± "
    return f"{mean:.{digits}f}{plus_minus}{std:.{digits}f}"


def pivot_cells(
    table: pd.DataFrame,
    value: str,
    spread: str | None,
    *,
    rows: str,
    columns: str,
    digits: int | None,
    scale: float = 1.0,
    latex: bool = False,
    column_order: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Pivot a long table into rows x columns of formatted `value ± spread` cells.

    Args:
        table: long table with one row per (rows, columns) pair.
        value: column holding the number; spread: column holding its spread (or None).
        rows, columns: the long table's columns that become the index and the header.
        digits: decimals shown; None shows the value as text (counts).
        scale: multiplies both value and spread (KID x 10^3).
        latex: emit `$\\pm$` and escape names.
        column_order: header order (default: first appearance).
    """
    order = list(column_order) if column_order is not None else list(dict.fromkeys(table[columns]))
    cells: dict[str, dict[str, str]] = {}
    for _, row in table.iterrows():
        if digits is None:
            text = str(row[value])
        else:
            std = row[spread] * scale if spread is not None else None
            text = format_mean_std(row[value] * scale, std, digits, latex)
        cells.setdefault(row[rows], {})[row[columns]] = text
    frame = pd.DataFrame.from_dict(cells, orient="index").reindex(columns=order).fillna("–")
    frame.index.name = rows
    if latex:
        frame = frame.rename(index=latex_escape, columns=latex_escape)
        frame.index.name = latex_escape(rows)
    return frame


def markdown_section(title: str, frame: pd.DataFrame) -> str:
    """A `### title` heading and the table as GitHub Markdown."""
    return f"### {title}\n\n{frame.to_markdown()}\n"


def latex_section(caption: str, frame: pd.DataFrame) -> str:
    """A booktabs tabular preceded by a comment naming it, ready to paste into a table float."""
    return f"% {caption}\n{frame.reset_index().to_latex(index=False, escape=False)}"


def figure_bytes(figure: Figure, fmt: str) -> bytes:
    """Render a matplotlib Figure (no pyplot state) to PNG or PDF bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt, dpi=150, bbox_inches="tight")
    return buffer.getvalue()


def write_outputs(out: str | Path, files: Mapping[str, str | bytes]) -> list[Path]:
    """Write every output file into `out`, each atomically (temporary name, then rename).

    Callers compute all results first and call this last, so bad input fails before
    anything lands in `out`.

    Raises:
        HistosynthError: `out` exists and is not a folder, or cannot be written.
    """
    folder = Path(out).expanduser()
    if folder.exists() and not folder.is_dir():
        raise HistosynthError(f"--out {folder}: exists and is not a folder")
    written: list[Path] = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            data = content.encode("utf-8") if isinstance(content, str) else content
            handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
            try:
                with os.fdopen(handle, "wb") as stream:
                    stream.write(data)
                os.replace(temporary, folder / name)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
            written.append(folder / name)
    except OSError as error:
        raise HistosynthError(f"--out {folder}: cannot write ({error})") from error
    return written
