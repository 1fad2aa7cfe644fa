"""Rendering pool metrics as the paper lays them out, and writing output folders all-or-nothing.

Table 2 of Niehues et al. has one row per generator and one column per tissue class. The
helpers here pivot the long CSV tables of `fid` and `msssim` into that shape for Markdown and
LaTeX, and write an output folder only after all results exist, through
`histosynth.files.staged_output`, so a failed run never leaves a half-written folder behind
and a successful one never leaves a file of an earlier run beside its own.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from histosynth.files import staged_output
from histosynth.tables import MISSING, format_estimate, format_frame, latex_table, markdown_table


def pivot_cells(
    table: pd.DataFrame,
    value: str,
    spread: str | None,
    *,
    rows: str,
    columns: str,
    digits: int | None,
    scale: float = 1.0,
    column_order: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Pivot a long table into rows x columns of formatted `value ± spread` cells.

    Args:
        table: long table with one row per (rows, columns) pair.
        value: column holding the number; spread: column holding its spread (or None).
        rows, columns: the long table's columns that become the index and the header.
        digits: decimals shown; None shows the value as text (counts).
        scale: multiplies both value and spread (KID x 10^3).
        column_order: header order (default: first appearance).
    """
    order = list(column_order) if column_order is not None else list(dict.fromkeys(table[columns]))
    cells: dict[str, dict[str, str]] = {}
    for _, row in table.iterrows():
        if digits is None:
            text = str(row[value])
        else:
            std = row[spread] * scale if spread is not None else None
            text = format_estimate(row[value] * scale, std, digits=digits)
        cells.setdefault(row[rows], {})[row[columns]] = text
    frame = pd.DataFrame.from_dict(cells, orient="index").reindex(columns=order).fillna(MISSING)
    frame.index.name = rows
    return frame


def markdown_section(title: str, frame: pd.DataFrame) -> str:
    """A `### title` heading and the table (its index as the first column) as GitHub Markdown."""
    return f"### {title}\n\n{markdown_table(format_frame(frame.reset_index()))}"


def latex_section(caption: str, frame: pd.DataFrame) -> str:
    """The table (its index as the first column) as a booktabs LaTeX table with `caption`."""
    return latex_table(format_frame(frame.reset_index()), caption)


def figure_bytes(figure: Figure, fmt: str) -> bytes:
    """Render a matplotlib Figure (no pyplot state) to PNG or PDF bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt, dpi=150, bbox_inches="tight")
    return buffer.getvalue()


def write_outputs(out: str | Path, files: Mapping[str, str | bytes], owned: Iterable[str]) -> list[Path]:
    """Write all `files` into `out` together, replacing the previous run's set.

    Callers compute all results first and call this last, so bad input fails before anything
    lands in `out`; a failure while writing leaves `out` as it was.

    Args:
        out: the output folder (created if missing).
        files: file name -> text (written as UTF-8) or bytes.
        owned: every name the calling command can write; those in `out` that are not in
            `files` are removed, so the folder never mixes two runs.

    Returns:
        The paths written, in the order of `files`.

    Raises:
        HistosynthError: `out` exists and is not a folder, or cannot be written.
    """
    with staged_output(out, owned=owned) as staging:
        for name, content in files.items():
            data = content.encode("utf-8") if isinstance(content, str) else content
            (staging / name).write_bytes(data)
    folder = Path(out).expanduser()
    return [folder / name for name in files]
