"""Fixtures of the rating-app tests: study files, a live server and a real browser.

The live server is the real `histosynth rate` command in a subprocess on a free loopback port,
stopped when the test ends; the browser is Debian's Chromium driven by Playwright.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from rater_app.raters import add_raters

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-gpu", "--disable-quic"]


def study_toml(
    folder: Path, sources: dict[str, Path], name: str = "pilot", file_name: str = "study.toml", **fields
) -> Path:
    """A study TOML in `folder` over `sources` (name -> pool), with seed 7 and 2 images per cell."""
    settings = {"name": name, "seed": 7, "images_per_cell": 2, **fields}
    lines = ["[study]"]
    for key, value in settings.items():
        lines.append(f"{key} = {_toml_value(value)}")
    lines.append("\n[sources]")
    lines.extend(f'"{source}" = "{Path(pool).as_posix()}"' for source, pool in sources.items())
    path = folder / file_name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


FRESH = itertools.count(1)


def fresh_raters(db: Path, *prefixes: str, study: str = "pilot") -> dict[str, str]:
    """Raters `<prefix><k>` new to a running study, k unique in the session (name -> secret).

    The tests that share one served study (`module_rating_server`) each take raters of their own,
    so that every test starts at tile 1 with no votes, whatever ran before it.
    """
    k = next(FRESH)
    return {r.name: r.secret for r in add_raters(str(db), study, [f"{prefix}{k}" for prefix in prefixes])}


@pytest.fixture
def write_study(tmp_path: Path) -> Callable[..., Path]:
    """Factory: write_study(sources, **study_fields) -> path of a study TOML in tmp_path."""

    def write(sources: dict[str, Path], **fields) -> Path:
        return study_toml(tmp_path, sources, **fields)

    return write


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    """A `histosynth rate` subprocess and its base URL."""

    url: str
    process: subprocess.Popen
    log: Path

    def log_text(self) -> str:
        """What the server wrote to stdout and stderr so far."""
        return self.log.read_text(encoding="utf-8", errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole process group: no shutdown hooks, as in a power cut."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


class RatingServers:
    """Starts `histosynth rate` subprocesses on free ports, logging into `folder`; `stop` ends them all."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.processes: list[subprocess.Popen] = []

    def __call__(
        self,
        db: Path,
        study: str | None = None,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> RunningServer:
        port = free_port()
        command = [sys.executable, "-m", "histosynth", "rate", "--db", str(db), "--port", str(port), *args]
        if study:
            command += ["--study", study]
        log = self.folder / f"server-{port}.log"
        with open(log, "wb") as output:
            process = subprocess.Popen(
                command,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        self.processes.append(process)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()}")
            try:
                if httpx.get(f"{base}/login", timeout=1).status_code == 200:
                    return RunningServer(base, process, log)
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server did not start within 60 s")

    def stop(self) -> None:
        """SIGTERM each server still running (SIGKILL after 10 s)."""
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


@pytest.fixture
def rating_server(tmp_path: Path) -> Iterator[RatingServers]:
    """Factory: rating_server(db, study=None, env=None, args=()) starts `histosynth rate` on a free port."""
    servers = RatingServers(tmp_path)
    yield servers
    servers.stop()


@pytest.fixture(scope="module")
def module_rating_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RatingServers]:
    """`rating_server` for the whole module: a server start costs seconds (Gradio's import), so the
    tests of one file that need the same study and no settings of their own share its server."""
    servers = RatingServers(tmp_path_factory.mktemp("servers"))
    yield servers
    servers.stop()


@pytest.fixture(scope="session")
def chromium():
    """One headless Debian Chromium for the session, driven by Playwright (a launch costs a second)."""
    if not shutil.which(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def browser(chromium):
    """The session's Chromium; every page a test opens gets its own context (cookies, storage),
    and every context is closed when the test ends, so no test sees another's session."""
    yield chromium
    for context in list(chromium.contexts):
        context.close()


def log_in(page, base: str, name: str, secret: str) -> None:
    """Log `name` in through the login form at `base` (a server's URL, or a proxy's sub-path)."""
    page.goto(f"{base}/login?name={name}")
    page.fill("#secret", secret)
    page.click("#login")


def wait_for_tile(page, position: int) -> None:
    """Wait until the tile at `position` is on screen and loaded, continuing past a block's pause."""
    page.wait_for_selector(f"#tile-img[data-position='{position}'], #block-done", timeout=30_000)
    if page.query_selector("#block-done"):
        page.keyboard.press("Enter")
    page.wait_for_selector(f"#tile-img[data-position='{position}']", timeout=30_000)
    page.wait_for_function("() => document.querySelector('#tile-img').complete")
