"""The SQLite study database: schema, connections and the image store beside it.

One file per deployment holds any number of studies. Every caller opens its own short-lived
connection (`connect`), so Gradio's worker threads never share one; WAL mode lets raters
vote while an admin reads progress, and `busy_timeout` turns brief lock contention into a
wait instead of an error.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from histosynth.errors import StudyError

SCHEMA_VERSION = 2
# How long a write waits for another writer's lock before it fails with a clear message.
BUSY_TIMEOUT_MS = int(os.environ.get("HISTOSYNTH_BUSY_TIMEOUT_MS", "10000"))

SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    seed INTEGER NOT NULL,
    classes TEXT NOT NULL,            -- JSON list, in block order
    sources TEXT NOT NULL,            -- JSON object: source name -> pool folder
    settings TEXT NOT NULL,           -- JSON: block_by_class, confidence, allow_changes, repeats
    admin_secret_hash TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY,              -- opaque random id; also the stored PNG's name
    study_id INTEGER NOT NULL REFERENCES studies(id),
    source TEXT NOT NULL,
    class TEXT NOT NULL,
    original_path TEXT NOT NULL,
    sha256 TEXT NOT NULL,             -- of the original file, for provenance
    png_sha256 TEXT NOT NULL          -- of the stored (padded) PNG, to detect tampering
);
CREATE INDEX IF NOT EXISTS items_study ON items(study_id);
CREATE TABLE IF NOT EXISTS raters (
    id INTEGER PRIMARY KEY,
    study_id INTEGER NOT NULL REFERENCES studies(id),
    name TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    order_secret TEXT,                -- random seed of this rater's order; NULL for raters of schema 1
    created_at REAL NOT NULL,
    UNIQUE (study_id, name)
);
CREATE TABLE IF NOT EXISTS assignments (
    rater_id INTEGER NOT NULL REFERENCES raters(id),
    position INTEGER NOT NULL,        -- 1-based place in this rater's order
    item_id TEXT NOT NULL REFERENCES items(id),
    repeat INTEGER NOT NULL DEFAULT 0, -- 1 for the second showing of an item
    token TEXT NOT NULL UNIQUE,       -- random id of this showing: the only id a browser sees
    PRIMARY KEY (rater_id, position),
    UNIQUE (rater_id, item_id, repeat)
);
CREATE TABLE IF NOT EXISTS votes (
    rater_id INTEGER NOT NULL,
    position INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    repeat INTEGER NOT NULL DEFAULT 0,
    vote TEXT NOT NULL CHECK (vote IN ('real', 'synthetic')),
    confidence INTEGER CHECK (confidence BETWEEN 1 AND 6),
    shown_at REAL NOT NULL,
    answered_at REAL NOT NULL,
    UNIQUE (rater_id, item_id, repeat),
    UNIQUE (rater_id, position),
    FOREIGN KEY (rater_id, position) REFERENCES assignments(rater_id, position)
);
CREATE TABLE IF NOT EXISTS vote_history (
    id INTEGER PRIMARY KEY,
    rater_id INTEGER NOT NULL,
    position INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    repeat INTEGER NOT NULL,
    vote TEXT NOT NULL,
    confidence INTEGER,
    shown_at REAL NOT NULL,
    answered_at REAL NOT NULL,
    replaced_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY,      -- sha256 of the cookie value; the value itself is never stored
    study_id INTEGER NOT NULL REFERENCES studies(id),
    rater_id INTEGER REFERENCES raters(id), -- NULL for the admin
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
"""


def image_store_dir(db_path: str | Path) -> Path:
    """The folder beside the database that holds the studies' blinded PNGs."""
    db_path = Path(db_path)
    return db_path.with_name(db_path.name + ".images")


@contextmanager
def connect(db_path: str | Path, *, create: bool = False) -> Iterator[sqlite_utils.Database]:
    """Open the study database for one unit of work, and close it afterwards.

    Args:
        db_path: the SQLite file.
        create: create the file and schema when missing; otherwise a missing file is an error,
            so that a typo in `--db` does not silently start an empty study.

    Raises:
        StudyError: the file is missing (and `create` is false) or is not a study database.
    """
    db_path = Path(db_path)
    if not create and not db_path.is_file():
        raise StudyError(f"{db_path}: study database does not exist")
    try:
        conn = sqlite3.connect(db_path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    except sqlite3.Error as error:
        raise StudyError(f"{db_path}: cannot open database ({error})") from error
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")  # an acknowledged vote survives power loss
        _ensure_schema(conn, db_path, create)
        yield sqlite_utils.Database(conn)
    except sqlite3.DatabaseError as error:
        if isinstance(error, sqlite3.IntegrityError):
            raise
        raise StudyError(f"{db_path}: database error ({error})") from error
    finally:
        conn.close()


@contextmanager
def transaction(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """Run a block as one immediate-write transaction: all of it lands, or none of it.

    BEGIN IMMEDIATE takes the write lock up front, so two raters' votes serialise at the
    start instead of failing halfway with SQLITE_BUSY on upgrade.
    """
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.conn.execute("ROLLBACK")
        raise
    db.conn.execute("COMMIT")


def hold_open(db_path: str | Path) -> sqlite3.Connection:
    """Open an idle connection for the life of a server process.

    In WAL mode the last connection to close checkpoints the log into the database and
    fsyncs it; with per-operation connections every vote would pay for that. One idle
    connection held open by the server keeps the WAL alive, so checkpoints happen in the
    background as SQLite's auto-checkpoint decides.
    """
    conn = sqlite3.connect(db_path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    return conn


def ensure_writable(db_path: str | Path) -> None:
    """Fail now, with a clear message, if votes could not be written to the database later.

    Rewrites the schema version in a write transaction: the smallest write SQLite can do.
    """
    try:
        with connect(db_path) as db, transaction(db):
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except StudyError as error:
        raise StudyError(f"{error}; the rating app must be able to write votes there") from error


def study_row(db: sqlite_utils.Database, name: str) -> dict:
    """The `studies` row of a study, or a StudyError listing the studies that do exist."""
    rows = list(db.query("SELECT * FROM studies WHERE name = ?", [name]))
    if not rows:
        known = [row["name"] for row in db.query("SELECT name FROM studies ORDER BY name")]
        hint = f" (studies here: {', '.join(known)})" if known else " (the database holds no study)"
        raise StudyError(f"no study named {name!r}{hint}")
    return rows[0]


# Each step takes a database of version N to N + 1, in one transaction.
MIGRATIONS = {
    # Orders drawn from a per-rater secret; older raters keep their (seed-derived) orders,
    # which `study audit` reports as derivable.
    1: "ALTER TABLE raters ADD COLUMN order_secret TEXT;",
}


def _ensure_schema(conn: sqlite3.Connection, db_path: Path, create: bool) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    while version in MIGRATIONS:
        conn.execute("BEGIN IMMEDIATE")
        if conn.execute("PRAGMA user_version").fetchone()[0] == version:  # not migrated meanwhile
            conn.execute(MIGRATIONS[version])
            conn.execute(f"PRAGMA user_version = {version + 1}")
        conn.execute("COMMIT")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
    if version == 0 and tables == 0 and create:
        conn.executescript(SCHEMA + f"PRAGMA user_version = {SCHEMA_VERSION};")
        return
    if version == 0:
        raise StudyError(f"{db_path}: not a histosynth study database")
    raise StudyError(f"{db_path}: schema version {version}, this histosynth reads {SCHEMA_VERSION}")
