"""`histosynth rate` and `histosynth demo`: serve the blinded rating app."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histosynth.cli.options import DbOption, HostOption, PortOption
from histosynth.errors import HistosynthError
from histosynth.urls import login_url, root_path

RootPathOption = Annotated[
    str,
    typer.Option(
        "--root-path",
        metavar="PATH",
        help="Public sub-path behind a reverse proxy that strips it, e.g. /histo (default: the site's root).",
    ),
]


def rate(
    db: DbOption,
    study: Annotated[
        str | None, typer.Option("--study", help="Study to serve (default: the only one).")
    ] = None,
    host: HostOption = "127.0.0.1",
    port: PortOption = 7860,
    trusted_proxy: Annotated[
        str | None,
        typer.Option(
            "--trusted-proxy",
            metavar="ADDR",
            help="Address of your reverse proxy; only its X-Forwarded-For/-Proto/-Host are believed.",
        ),
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            metavar="NAME",
            help="Host name the app answers to; repeat (default: loopback names when bound to loopback).",
        ),
    ] = None,
    public_path: RootPathOption = "",
) -> None:
    """Serve the blinded rating app (Gradio) for raters and the study's admin."""
    prefix = root_path(public_path)  # refused before the server's imports
    from rater_app.server import serve

    serve(
        db,
        study,
        host=host,
        port=port,
        trusted_proxy=trusted_proxy,
        allowed_hosts=allowed_host or (),
        root_path=prefix,
    )


def demo(
    folder: Annotated[Path, typer.Option("--dir", help="Where the demo data and database live.")] = Path(
        "histosynth-demo"
    ),
    launch: Annotated[bool, typer.Option("--launch/--no-launch", help="Start the rating app.")] = True,
    host: HostOption = "127.0.0.1",
    port: PortOption = 7860,
    public_path: RootPathOption = "",
    url: Annotated[
        str | None,
        typer.Option(
            metavar="URL", help="Public base URL for the printed login links (default: http://HOST:PORT)."
        ),
    ] = None,
) -> None:
    """Build the demo data (first run), create the demo study with three raters, and serve it."""
    prefix = root_path(public_path)
    if prefix and url is None:
        # http://HOST:PORT/login works, but its redirect to the sub-path only exists at the proxy
        raise HistosynthError(
            f"--root-path {prefix} needs --url, the proxy's public address (for example "
            f"https://lab.example.org{prefix}), for the login links"
        )
    from rater_app.demo import prepare_demo

    logins = prepare_demo(folder)
    base = url or f"http://{host}:{port}"
    typer.echo(f"demo study {logins.study!r} in {logins.db_path}")
    typer.echo("name\tsecret\tlogin-url")
    for rater in logins.raters:
        typer.echo(f"{rater.name}\t{rater.secret}\t{login_url(base, rater.name)}")
    typer.echo(f"admin\t{logins.admin_secret}\t{login_url(base, 'admin')}")
    if launch:
        from rater_app.server import serve

        typer.echo(f"serving on http://{host}:{port}/ (Ctrl-C stops)")
        serve(logins.db_path, logins.study, host=host, port=port, root_path=prefix)
