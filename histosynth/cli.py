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


@study_app.command("create")
def study_create(
    config: Annotated[Path, typer.Argument(help="Study definition (TOML).")],
    db: DbOption,
) -> None:
    """Sample tiles from the pools, blind them and create the study in the database."""
    from rater_app.create import create_study

    created = create_study(config, db)
    typer.echo(f"study {created.name}: {created.n_items} tiles, image store {created.store_dir}")
    typer.echo(f"admin\t{created.admin_secret}\t(shown once; log in as 'admin' to see progress)")


@raters_app.command("add")
def raters_add(
    names: Annotated[list[str], typer.Argument(help="Rater names.")],
    db: DbOption,
    study: StudyOption,
    url: Annotated[str, typer.Option(help="Base URL of the rating app, for the login links.")] = (
        "http://127.0.0.1:7860"
    ),
) -> None:
    """Add raters; prints name<TAB>secret<TAB>login-url once per rater (secrets are not stored)."""
    from urllib.parse import quote

    from rater_app.raters import add_raters

    for rater in add_raters(str(db), study, names):
        typer.echo(f"{rater.name}\t{rater.secret}\t{url.rstrip('/')}/login?name={quote(rater.name)}")


@raters_app.command("list")
def raters_list(db: DbOption, study: StudyOption) -> None:
    """List the study's raters."""
    from rater_app.raters import list_raters

    for name in list_raters(str(db), study):
        typer.echo(name)


@study_app.command("status")
def study_status_command(db: DbOption, study: StudyOption) -> None:
    """Progress per rater: answered of total."""
    from rater_app.export import study_status

    for progress in study_status(db, study):
        state = "done" if progress.done else ""
        typer.echo(f"{progress.rater}\t{progress.answered}/{progress.total}\t{state}".rstrip())


@study_app.command("export")
def study_export(
    db: DbOption,
    study: StudyOption,
    out: Annotated[Path | None, typer.Option("--out", help="CSV file; standard output if omitted.")] = None,
) -> None:
    """Export the votes as CSV (rater,item,class,source,vote,confidence,repeat,seconds,position)."""
    from rater_app.export import export_votes

    text = export_votes(db, study, out)
    if out is None:
        typer.echo(text, nl=False)
    else:
        typer.echo(f"wrote {out}", err=True)


@app.command("rate")
def rate(
    db: DbOption,
    study: Annotated[
        str | None, typer.Option("--study", help="Study to serve (default: the only one).")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind; loopback by default.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7860,
) -> None:
    """Serve the blinded rating app (Gradio) for raters and the study's admin."""
    from rater_app.server import serve

    serve(db, study, host=host, port=port)


def main() -> None:
    """Console-script entry point: run the app, turning library errors into one line."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except HistosynthError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(1)
