"""The `histosynth` command line: thin typer commands over the apps' Python functions.

Each command parses options and calls one function of `rater_app`, `evaluator` or
`trainer`, imported inside the command so that `histosynth study ...` starts without
importing torch. Library errors (`HistosynthError`) become one line on stderr and exit 1.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from histosynth.errors import HistosynthError

app = typer.Typer(
    help="Train, rate and evaluate generative models of histology.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
study_app = typer.Typer(help="Create blinded rating studies and manage their raters.", no_args_is_help=True)
raters_app = typer.Typer(help="Add and list the raters of a study.", no_args_is_help=True)
evaluate_app = typer.Typer(help="Turn votes and image pools into tables and figures.", no_args_is_help=True)
app.add_typer(study_app, name="study")
study_app.add_typer(raters_app, name="raters")
app.add_typer(evaluate_app, name="evaluate")

DbOption = Annotated[Path, typer.Option("--db", help="SQLite study database file.")]
StudyOption = Annotated[str, typer.Option("--study", help="Study name inside the database.")]


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


def main() -> None:
    """Console-script entry point: run the app, turning library errors into one line."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except HistosynthError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(1)
