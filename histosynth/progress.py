"""Progress bars by one rule: shown when stderr is a terminal, unless the user says otherwise.

Every long command takes `--progress/--no-progress`; left unset, a bar appears in a terminal and
stays silent in pipes, logs and tests. Bars are rich's, drawn on stderr so that stdout stays
clean for tables and CSV.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_enabled(flag: bool | None = None) -> bool:
    """`flag` when given (the `--progress/--no-progress` option), else whether stderr is a terminal."""
    return sys.stderr.isatty() if flag is None else flag


def progress_bar(
    enabled: bool | None = None, *, fields: Sequence[str] = (), transient: bool = True
) -> Progress:
    """A rich `Progress` on stderr; a disabled one accepts every call and draws nothing.

    Args:
        enabled: see `progress_enabled`.
        fields: names of numbers shown after the bar, such as `("loss",)`: pass them to
            `add_task(..., loss=nan)` and `update(task, loss=value)`.
        transient: remove the bar when it finishes (keep it for training runs).

    Use it as a context manager: `with progress_bar(flag) as bar: task = bar.add_task(...)`.
    """
    columns: list[ProgressColumn | str] = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    columns.extend(TextColumn(f"{name} {{task.fields[{name}]:.4g}}") for name in fields)
    return Progress(
        *columns,
        console=Console(stderr=True),
        disable=not progress_enabled(enabled),
        transient=transient,
    )
