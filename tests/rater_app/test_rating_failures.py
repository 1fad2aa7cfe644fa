"""Bad things at run time: a missing, locked or read-only database, a deleted tile, junk requests.

Each must give the rater (and the log) a clear message, keep the server alive and never turn
an unsaved vote into an acknowledged one.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from rater_app.create import create_study
from rater_app.raters import add_raters
from rater_app.store import image_store_dir
from rater_app.ui import NOT_SAVED

from ..conftest import build_pool, histosynth_process
from .conftest import RunningServer, fresh_raters, study_toml
from .simulated_rater import SimulatedRater, simulated_rater


@pytest.fixture
def study(tmp_path, make_pool, write_study) -> tuple[Path, dict[str, str]]:
    sources = {"real": make_pool("real"), "KLF8-DM": make_pool("klf8")}
    db = tmp_path / "study.db"
    create_study(write_study(sources), db)
    return db, {r.name: r.secret for r in add_raters(str(db), "pilot", ["ann", "ben"])}


@pytest.fixture(scope="module")
def served(tmp_path_factory, module_rating_server) -> tuple[Path, RunningServer]:
    """One served study for the tests that need no server settings of their own (a start costs
    seconds); each takes a fresh rater, so it starts at tile 1 whatever ran before."""
    folder = tmp_path_factory.mktemp("served")
    sources = {source: build_pool(folder / "pools" / source) for source in ("real", "KLF8-DM")}
    db = folder / "study.db"
    create_study(study_toml(folder, sources), db)
    return db, module_rating_server(db)


@pytest.fixture
def rater(served) -> tuple[Path, RunningServer, SimulatedRater]:
    """A fresh rater of the shared study, logged in and started, closed after the test."""
    db, server = served
    [(name, secret)] = fresh_raters(db, "ann").items()
    rater = simulated_rater(server.url, name, secret)
    yield db, server, rater
    rater.close()


def vote_count(db: Path, rater: str | None = None) -> int:
    """The votes in the database, or `rater`'s."""
    with sqlite3.connect(db) as conn:
        if rater is None:
            return conn.execute("SELECT count(*) FROM votes").fetchone()[0]
        own = "JOIN raters r ON r.id = v.rater_id WHERE r.name = ?"
        return conn.execute(f"SELECT count(*) FROM votes v {own}", [rater]).fetchone()[0]


def test_missing_database_is_one_line(tmp_path) -> None:
    result = histosynth_process("rate", "--db", str(tmp_path / "typo.db"), "--port", "1")
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {tmp_path / 'typo.db'}: study database does not exist"
    assert not (tmp_path / "typo.db").exists()


def test_locked_database_refuses_the_vote_then_recovers(study, rating_server) -> None:
    db, secrets = study
    server = rating_server(db, env={"HISTOSYNTH_BUSY_TIMEOUT_MS": "500"})
    ann = simulated_rater(server.url, "ann", secrets["ann"])
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        view = ann.vote("real")
        assert view.position == 1 and view.message == NOT_SAVED  # same tile, clear message
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert vote_count(db) == 0
    assert ann.vote("real").position == 2 and vote_count(db, ann.name) == 1
    assert "not saved" in server.log_text() and "locked" in server.log_text()


def test_short_lock_is_invisible(rater) -> None:
    db, _, ann = rater
    locker = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    locker.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(1.0, lambda: (locker.execute("ROLLBACK"), locker.close()))
    release.start()
    view = ann.vote("synthetic")  # waits for the lock instead of failing
    release.join()
    assert view.position == 2 and view.message == "" and vote_count(db, ann.name) == 1


@pytest.mark.skipif(shutil.which("chattr") is None, reason="needs chattr to make a file read-only for root")
def test_read_only_database_is_refused_at_start(study) -> None:
    """Votes could not be saved, so the app must not start (a write failure later on is the
    locked-database case above: the vote is refused with a message and never acknowledged)."""
    db, _ = study
    if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode != 0:
        pytest.skip("this file system does not support the immutable attribute")
    try:
        result = histosynth_process("rate", "--db", str(db), "--port", "1")
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "readonly database" in lines[0] and "must be able to write votes" in lines[0]


def test_deleted_tile(rater) -> None:
    db, server, ann = rater
    with sqlite3.connect(db) as conn:
        second, token = conn.execute(
            "SELECT a.item_id, a.token FROM assignments a JOIN raters r ON r.id = a.rater_id"
            " WHERE r.name = ? AND a.position = 2",
            [ann.name],
        ).fetchone()
    tile = image_store_dir(db) / f"{second}.png"
    kept = tile.read_bytes()
    tile.unlink()
    try:
        response = ann.client.get(f"/tiles/{token}.png")
        assert response.status_code == 500 and "missing from the study's image store" in response.text
        ann.fetch_tile = lambda token: b""  # the page's <img> fails; the text says why
        view = ann.vote("real")
    finally:
        tile.write_bytes(kept)  # the study is shared with the other tests
    assert view.position == 2 and "could not be loaded" in view.message
    assert "missing from the image store" in server.log_text()
    assert vote_count(db, ann.name) == 1 and server.process.poll() is None


def test_junk_requests_do_not_hurt(rater) -> None:
    db, server, ann = rater
    client = ann.client
    assert client.post("/gradio_api/queue/join", content=b"{not json").status_code in (400, 422)
    assert client.post("/gradio_api/queue/join", json={"fn_index": 999, "data": []}).status_code in (
        400,
        404,
        422,
    )
    assert client.get("/tiles/..%2F..%2Fstudy.db.png").status_code == 404
    assert client.get("/tiles/zz.png").status_code == 404
    with httpx.Client(base_url=server.url) as anonymous:
        response = anonymous.post("/login", data={})
        assert response.status_code == 303 and "error=" in response.headers["location"]
    time.sleep(0.1)
    assert ann.vote("real").position == 2 and vote_count(db, ann.name) == 1
