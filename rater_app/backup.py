"""Consistent copies of a live study database, taken while raters vote.

Copying the file with `cp` while the server runs can tear a page or miss the WAL, where the
newest votes live until a checkpoint. SQLite's online backup API copies one consistent snapshot
through a read transaction instead, so writers keep going: the copy holds every vote committed
before the backup began and none half-written. Each copy is checked with `PRAGMA
integrity_check`, made a single self-contained file (rollback journal, no -wal beside it) and
moved into place only then, so a failed or interrupted backup never leaves a file that looks
like a good one.

The blinded PNGs beside the database (`<db>.images/`) are written once by `study create` and
never change; back that folder up once, beside the first copy. Restoring is a copy of both.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from histosynth.errors import HistosynthError, StudyError
from rater_app.store import BUSY_TIMEOUT_MS, connect

INTERVAL = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
SECONDS_PER_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class BackupSummary:
    """One verified copy and what it holds."""

    path: Path
    studies: int
    raters: int
    votes: int

    def line(self) -> str:
        return (
            f"wrote {self.path}: {self.studies} studies, {self.raters} raters, {self.votes} votes "
            "(integrity check ok)"
        )


def backup_database(db_path: str | Path, out: str | Path, *, force: bool = False) -> BackupSummary:
    """Copy the live database `db_path` to `out` through SQLite's online backup API.

    Args:
        db_path: the study database; the rating app may be writing to it.
        out: the copy to write.
        force: replace an existing `out`.

    Returns:
        What the verified copy holds.

    Raises:
        StudyError: `db_path` is not a study database; `out` is the database itself (or its WAL),
            a folder, or an existing file without `force`; the copy fails its integrity check
            (nothing is left).
    """
    db_path, out = Path(db_path), Path(out)
    require_study_database(db_path)
    own_files = {db_path.resolve(), *(Path(f"{db_path.resolve()}{suffix}") for suffix in ("-wal", "-shm"))}
    if out.resolve() in own_files:
        raise StudyError(f"--out {out}: is the database {db_path} itself; back it up to another file")
    if out.is_dir():
        raise StudyError(f"--out {out}: is a folder; name a file, or add --every for rolling copies")
    if out.exists() and not force:
        raise StudyError(f"--out {out}: already exists; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    return _write_copy(db_path, out)


def require_study_database(db_path: Path) -> None:
    """Refuse, in one line, a missing file or one that is not a study database (before any write)."""
    with connect(db_path):
        pass


def _write_copy(db_path: Path, out: Path) -> BackupSummary:
    """Back `db_path` up into a partial file beside `out`, check it, then give it `out`'s name."""
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}-{threading.get_ident()}")
    try:
        summary = _copy_and_verify(db_path, partial)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return BackupSummary(out, *summary)


def _copy_and_verify(db_path: Path, partial: Path) -> tuple[int, int, int]:
    """Back `db_path` up into `partial`; its (studies, raters, votes) once it passes the check."""
    partial.unlink(missing_ok=True)
    source = sqlite3.connect(db_path, timeout=BUSY_TIMEOUT_MS / 1000)
    copy = sqlite3.connect(partial, isolation_level=None)
    try:
        source.backup(copy)  # all pages in one step: one snapshot, never restarted by a writer
        copy.execute("PRAGMA journal_mode = DELETE")  # one file, no -wal to forget beside it
        verdict = [row[0] for row in copy.execute("PRAGMA integrity_check")]
        if verdict != ["ok"]:
            raise StudyError(f"{db_path}: the backup failed its integrity check ({'; '.join(verdict[:3])})")
        tables = ("studies", "raters", "votes")
        studies, raters, votes = (copy.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables)
    except sqlite3.Error as error:
        raise StudyError(f"{db_path}: backup failed ({error})") from error
    finally:
        copy.close()
        source.close()
    with open(partial, "rb") as handle:  # on disk before it takes the final name
        os.fsync(handle.fileno())
    return studies, raters, votes


def parse_interval(text: str) -> float:
    """Seconds in `30s`, `10m`, `2h`, `1d` or a bare number of seconds.

    Raises:
        HistosynthError: anything else, or a non-positive interval.
    """
    match = INTERVAL.fullmatch(text.strip())
    seconds = float(match[1]) * SECONDS_PER_UNIT[match[2]] if match else 0.0
    if seconds <= 0:
        raise HistosynthError(f"--every {text!r}: expected a positive interval such as 30s, 10m, 2h or 1d")
    return seconds


def rolling_name(db_path: Path, when: datetime) -> str:
    """`<db stem>-<UTC time>.db`: names sort by time, so the oldest are the first to go."""
    return f"{db_path.stem}-{when.strftime('%Y%m%dT%H%M%S%fZ')}.db"


def backup_every(
    db_path: str | Path,
    folder: str | Path,
    every: float,
    keep: int,
    *,
    stop: threading.Event | None = None,
    report: Callable[[BackupSummary], None] = lambda summary: None,
) -> None:
    """Back up `db_path` into `folder` every `every` seconds, keeping the newest `keep` copies.

    Runs until `stop` is set (the CLI: until interrupted). A copy is taken at once, then one per
    interval; a copy is deleted only after a newer one has passed its check.

    Raises:
        StudyError: `db_path` is not a study database; `folder` is a file; `keep` is below 1;
            a copy fails its integrity check.
    """
    db_path, folder = Path(db_path), Path(folder)
    require_study_database(db_path)
    if keep < 1:
        raise StudyError(f"--keep {keep}: must keep at least 1 copy")
    if folder.exists() and not folder.is_dir():
        raise StudyError(f"--out {folder}: is a file; with --every, --out names the folder of the copies")
    folder.mkdir(parents=True, exist_ok=True)
    stop = stop or threading.Event()
    while True:
        out = folder / rolling_name(db_path, datetime.now(timezone.utc))
        report(_write_copy(db_path, out))  # checked once above; rolling names are new files
        for old in sorted(folder.glob(f"{db_path.stem}-*Z.db"))[:-keep]:
            old.unlink()
        if stop.wait(every):
            return
