"""`histosynth study ...`: create blinded studies, manage raters, follow and export them."""

from __future__ import annotations

import getpass
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import typer

from histosynth.cli.options import DbOption, StudyOption
from histosynth.errors import HistosynthError
from histosynth.urls import login_url

app = typer.Typer(help="Create blinded rating studies and manage their raters.", no_args_is_help=True)
raters_app = typer.Typer(
    help="Add, list, reset, disable and enable the raters of a study; show the admin record.",
    no_args_is_help=True,
)
app.add_typer(raters_app, name="raters")
NamesArgument = Annotated[list[str], typer.Argument(help="Rater names.")]
UrlOption = Annotated[str, typer.Option(help="Base URL of the rating app, for the login links.")]
DEFAULT_URL = "http://127.0.0.1:7860"


def cli_actor() -> str:
    """Who the admin record names for a change made from this terminal."""
    return f"cli:{getpass.getuser()}"


@app.command("create")
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
def raters_add(names: NamesArgument, db: DbOption, study: StudyOption, url: UrlOption = DEFAULT_URL) -> None:
    """Add raters; prints name<TAB>secret<TAB>login-url once per rater (secrets are not stored)."""
    from rater_app.raters import add_raters

    for rater in add_raters(str(db), study, names, actor=cli_actor()):
        typer.echo(f"{rater.name}\t{rater.secret}\t{login_url(url, rater.name)}")


@raters_app.command("reset")
def raters_reset(
    names: NamesArgument, db: DbOption, study: StudyOption, url: UrlOption = DEFAULT_URL
) -> None:
    """New secrets for raters (their sessions end, votes stay); prints name<TAB>secret<TAB>login-url."""
    from rater_app.raters import reset_secrets

    for rater in reset_secrets(str(db), study, names, actor=cli_actor()):
        typer.echo(f"{rater.name}\t{rater.secret}\t{login_url(url, rater.name)}")


@raters_app.command("disable")
def raters_disable(names: NamesArgument, db: DbOption, study: StudyOption) -> None:
    """Disable raters: they cannot log in, and a running server refuses their sessions within 5 s."""
    from rater_app.raters import set_disabled

    set_disabled(str(db), study, names, True, actor=cli_actor())
    typer.echo(f"disabled {', '.join(names)}", err=True)


@raters_app.command("enable")
def raters_enable(names: NamesArgument, db: DbOption, study: StudyOption) -> None:
    """Enable disabled raters again; they log in with their old secret."""
    from rater_app.raters import set_disabled

    set_disabled(str(db), study, names, False, actor=cli_actor())
    typer.echo(f"enabled {', '.join(names)}", err=True)


@raters_app.command("actions")
def raters_actions(db: DbOption, study: StudyOption) -> None:
    """The admin record: time (UTC)<TAB>actor<TAB>action<TAB>target, oldest first."""
    from rater_app.raters import admin_record

    for action in admin_record(str(db), study):
        when = datetime.fromtimestamp(action.at, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        typer.echo(f"{when}\t{action.actor}\t{action.action}\t{action.target or ''}".rstrip())


@raters_app.command("list")
def raters_list(db: DbOption, study: StudyOption) -> None:
    """List the study's raters."""
    from rater_app.raters import list_raters

    for name in list_raters(str(db), study):
        typer.echo(name)


@app.command("status")
def study_status_command(db: DbOption, study: StudyOption) -> None:
    """Progress per rater: answered of total, done or disabled, and simulated."""
    from rater_app.raters import study_status

    for progress in study_status(db, study):
        state = "disabled" if progress.disabled else "done" if progress.done else ""
        state += " simulated" if progress.simulated else ""
        typer.echo(f"{progress.rater}\t{progress.answered}/{progress.total}\t{state.strip()}".rstrip())


@app.command("simulate")
def study_simulate(
    db: DbOption,
    study: StudyOption,
    raters: Annotated[int, typer.Option("--raters", help="How many simulated raters to add.")],
    accuracy: Annotated[
        float, typer.Option(help="Expected share of correct real/synthetic calls (0.5: chance).")
    ] = 0.75,
    seed: Annotated[int, typer.Option(help="Seed of the simulated votes and reading times.")] = 0,
) -> None:
    """Fill a pilot study with simulated raters, to see every table before pathologists start.

    The raters (sim-01, ...) are marked as simulated in the database, the export and every
    table made from their votes. Refused once real raters have voted.
    """
    from rater_app.simulate import SimulationSettings, simulate_study

    settings = SimulationSettings(raters=raters, accuracy=accuracy, seed=seed)
    names = simulate_study(db, study, settings)
    typer.echo(f"study {study}: {len(names)} simulated raters ({names[0]} .. {names[-1]}) rated every tile")


@app.command("export")
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


@app.command("audit")
def study_audit(db: DbOption, study: StudyOption) -> None:
    """Check the blinding: image format, size, mode and metadata, opaque ids, order vs source."""
    from rater_app.audit import audit_study

    report = audit_study(db, study)
    for line in report.lines():
        typer.echo(line)
    if not report.passed:
        raise typer.Exit(1)


@app.command("backup")
def study_backup(
    db: DbOption,
    out: Annotated[
        Path, typer.Option("--out", help="The copy to write; with --every, the folder of rolling copies.")
    ],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out file.")] = False,
    every: Annotated[
        str | None,
        typer.Option("--every", help="Back up again at this interval (30s, 10m, 2h) until stopped."),
    ] = None,
    keep: Annotated[
        int | None, typer.Option("--keep", help="With --every: how many newest copies to keep (default 24).")
    ] = None,
) -> None:
    """Copy the live database safely while raters vote (SQLite's online backup), then check the copy.

    The copy holds every vote committed before it began and passes `PRAGMA integrity_check`, or
    nothing is written. The tile images (`DB.images/`) never change after `study create`: back
    that folder up once. Restoring is copying both back while the server is stopped.
    """
    import signal
    import threading

    from rater_app.backup import backup_database, backup_every, parse_interval

    if every is None:
        if keep is not None:
            raise HistosynthError("--keep: only with --every (one copy is written without it)")
        typer.echo(backup_database(db, out, force=force).line())
        return
    if force:
        raise HistosynthError("--force: not with --every (each rolling copy is a new file; none is replaced)")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # systemd's stop: finish the copy, then end
    try:
        copies = 24 if keep is None else keep
        backup_every(db, out, parse_interval(every), copies, stop=stop, report=lambda s: typer.echo(s.line()))
    except KeyboardInterrupt:
        typer.echo("stopped", err=True)
