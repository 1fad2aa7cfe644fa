"""The `histosynth` command line: thin typer commands over the apps' Python functions.

One module per command group (`study`, `rate` and `demo`, `evaluate`, ...). Each command parses
options and calls one function of `rater_app`, `evaluator` or `trainer`, imported inside the
command so that `histosynth study ...` starts without importing torch, and so that the core's
other modules never import an app. Library errors (`HistosynthError`) and `OSError`s become one
line on stderr and exit 1; any other exception too, with the hint that `HISTOSYNTH_DEBUG=1` shows
its traceback (a user should never have to read one to learn what went wrong); Ctrl-C exits 130.
"""

from __future__ import annotations

import logging
import os
import sys

import typer

from histosynth.cli import evaluate, generate, importer, rate, reproduce, study, train
from histosynth.errors import HistosynthError

DEBUG_VARIABLE = "HISTOSYNTH_DEBUG"
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"

app = typer.Typer(
    help="Train, rate and evaluate generative models of histology.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(study.app, name="study")
app.command("rate")(rate.rate)
app.command("demo")(rate.demo)
app.add_typer(evaluate.app, name="evaluate")
app.add_typer(train.app, name="train")
app.command("generate")(generate.generate)
app.add_typer(importer.app, name="import")
app.command("reproduce")(reproduce.reproduce)


def main() -> None:
    """Console-script entry point: run the app, turning library errors into one line."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        app()
    except HistosynthError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(1)
    except OSError as error:  # a path the user gave cannot be read or written (not a folder, disk full...)
        where = error.filename if error.filename is not None else "file system"
        typer.echo(f"error: {where}: {error.strerror or error}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as error:
        if os.environ.get(DEBUG_VARIABLE, "") not in ("", "0"):
            raise
        message = " ".join(str(error).split()) or "(no message)"
        typer.echo(
            f"error: {type(error).__name__}: {message} (set {DEBUG_VARIABLE}=1 for the traceback)", err=True
        )
        sys.exit(1)
