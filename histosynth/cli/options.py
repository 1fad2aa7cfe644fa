"""Options and parsers shared by several command groups, so each is spelled one way everywhere."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from histosynth.errors import HistosynthError

DbOption = Annotated[Path, typer.Option("--db", help="SQLite study database file.")]
StudyOption = Annotated[str, typer.Option("--study", help="Study name inside the database.")]
HostOption = Annotated[str, typer.Option(help="Address to bind; loopback by default.")]
PortOption = Annotated[int, typer.Option(help="Port to listen on.")]

# Options shared by the pool evaluators (fid, tsne, msssim, memorization).
PoolsOption = Annotated[
    list[str], typer.Option("--pool", help="Generated pool NAME=DIR; repeat for several.")
]
ReferenceOption = Annotated[Path, typer.Option("--reference", help="Real pool <DIR>/<CLASS>/<image>.")]
ExtractorOption = Annotated[
    str, typer.Option(help="'inception' (clean-fid) or module:callable returning the feature model.")
]
WeightsOption = Annotated[
    Path | None,
    typer.Option(help="inception-2015-12-05.pt or its folder (default: <cache>/weights/)."),
]
ModeOption = Annotated[
    str, typer.Option(help="'clean' (resize to 299, clean-fid) or 'native' (pixels at their native size).")
]
WorkersOption = Annotated[int, typer.Option(help="Threads decoding and resizing images.")]
DeviceOption = Annotated[str | None, typer.Option(help="Torch device (default: cuda if available).")]
CacheOption = Annotated[bool, typer.Option(help="Use the feature cache.")]
SizeOption = Annotated[int, typer.Option(help="Resize images to SIZE x SIZE, bilinear (0: native size).")]
ProgressOption = Annotated[
    bool | None,
    typer.Option(
        "--progress/--no-progress", help="Progress bars on stderr (default: when it is a terminal)."
    ),
]


def parse_named_dirs(values: list[str], option: str) -> dict[str, Path]:
    """Parse repeated `NAME=DIR` options (e.g. `--pool KLF8-DM=pools/klf8`) in order.

    Raises:
        HistosynthError: a value lacks `=`, has an empty side, or repeats a name.
    """
    named: dict[str, Path] = {}
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep or not name or not folder:
            raise HistosynthError(f"{option} {value!r}: expected NAME=DIR")
        if name in named:
            raise HistosynthError(f"{option}: name {name!r} given twice")
        named[name] = Path(folder)
    return named


def report(message: str) -> None:
    """Print a command's closing line on stderr, once: under torchrun or `accelerate launch` only
    the main process (RANK 0) reports, so a two-process run does not say everything twice."""
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(message, err=True)
