"""The SQLite study database: schema, connections, every query, and the image store beside it.

One file per deployment holds any number of studies. Every caller opens its own short-lived
connection (`connect`), so Gradio's worker threads never share one; WAL mode lets raters
vote while an admin reads progress, and `busy_timeout` turns brief lock contention into a
wait instead of an error.

This module is the only one that speaks SQL or decodes the JSON columns: the rest of the app
calls the functions below, which take an open database (so that the caller decides what runs
in one `transaction`) and return typed rows (`Study`, `StudySettings`, `RaterRecord`, `Tile`).
The sqlite-utils table API serves the plain reads and writes; the queries of the vote path
(`frontier`, `tile_row`, `showing_for_token`, `assignment_at`, `vote_at` and the vote writes)
are hand-written SQL, one statement each that SQLite answers from an index, because every key
press of every rater runs them and sqlite-utils would add schema look-ups to each call.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from histosynth.errors import StudyError

SCHEMA_VERSION = 4
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
    disabled_at REAL,                 -- set while an admin has disabled the rater; NULL otherwise
    simulated INTEGER NOT NULL DEFAULT 0, -- 1 for a rater of `histosynth study simulate`
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
CREATE TABLE IF NOT EXISTS admin_actions (
    id INTEGER PRIMARY KEY,
    study_id INTEGER NOT NULL REFERENCES studies(id),
    actor TEXT NOT NULL,              -- who: 'admin' from the page, 'cli:<user>' from a terminal
    action TEXT NOT NULL,             -- what, e.g. 'rater.add', 'rater.disable', 'results.view'
    target TEXT,                      -- the rater concerned, when there is one
    at REAL NOT NULL                  -- when (epoch seconds)
);
CREATE INDEX IF NOT EXISTS admin_actions_study ON admin_actions(study_id, at);
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


@dataclass(frozen=True)
class StudySettings:
    """The rating settings stored with a study (the `settings` JSON column)."""

    block_by_class: bool
    confidence: str  # one of histosynth.study_config.CONFIDENCE_SCALES: "none" or "6-point"
    allow_changes: bool
    repeats: int
    images_per_cell: int | None = None  # absent in studies created before it was stored
    title: str | None = None
    instructions: str | None = None  # Markdown for the raters; absent in older studies

    @classmethod
    def from_json(cls, text: str) -> StudySettings:
        values = json.loads(text)
        return cls(
            block_by_class=values["block_by_class"],
            confidence=values["confidence"],
            allow_changes=values["allow_changes"],
            repeats=values["repeats"],
            images_per_cell=values.get("images_per_cell"),
            title=values.get("title"),
            instructions=values.get("instructions"),
        )


@dataclass(frozen=True)
class Study:
    """One row of `studies`, its JSON columns decoded."""

    id: int
    name: str
    seed: int
    classes: list[str]  # in block order
    sources: dict[str, str]  # source name -> pool folder
    settings: StudySettings
    admin_secret_hash: str


@dataclass(frozen=True)
class RaterRecord:
    """A rater, the size of their order and their study's settings."""

    id: int
    study_id: int
    name: str
    total: int
    settings: StudySettings


@dataclass(frozen=True)
class Tile:
    """One place in a rater's order, with the rater's current answer there (if any)."""

    position: int
    item_id: str
    token: str
    total: int
    answered: int
    vote: str | None
    confidence: int | None
    next_token: str | None


@dataclass(frozen=True)
class Assignment:
    """What the vote path needs about one place of a rater's order."""

    item_id: str
    token: str
    repeat: int
    settings: StudySettings


@dataclass(frozen=True)
class RaterProgress:
    """How far one rater has come."""

    rater: str
    answered: int
    total: int
    last_vote_at: float | None
    disabled_at: float | None = None  # when an admin disabled the rater; None while enabled
    simulated: bool = False  # a rater of `histosynth study simulate`, not a person

    @property
    def done(self) -> bool:
        return self.answered == self.total

    @property
    def disabled(self) -> bool:
        return self.disabled_at is not None


# --- studies and items ---------------------------------------------------------------------


def study_names(db: sqlite_utils.Database) -> list[str]:
    """Names of the database's studies, sorted."""
    return sorted(row["name"] for row in db["studies"].rows_where(select="name"))


def has_study(db: sqlite_utils.Database, name: str) -> bool:
    """Whether a study of that name exists."""
    return db["studies"].count_where("name = ?", [name]) > 0


def find_study(db: sqlite_utils.Database, name: str) -> Study:
    """The study of that name.

    Raises:
        StudyError: there is none; the message lists the studies that do exist, since the
            name usually comes from a `--study` option with a typo.
    """
    rows = list(db["studies"].rows_where("name = ?", [name]))
    if not rows:
        known = study_names(db)
        hint = f" (studies here: {', '.join(known)})" if known else " (the database holds no study)"
        raise StudyError(f"no study named {name!r}{hint}")
    return _study(rows[0])


def study_by_id(db: sqlite_utils.Database, study_id: int) -> Study:
    """The study with that id (ids come from the database itself, so it exists)."""
    return _study(db["studies"].get(study_id))


def insert_study(
    db: sqlite_utils.Database,
    *,
    name: str,
    seed: int,
    classes: list[str],
    sources: dict[str, str],
    settings: dict[str, Any],
    admin_secret_hash: str,
) -> int:
    """Add a study row (JSON columns encoded here) and return its id."""
    record = {
        "name": name,
        "seed": seed,
        "classes": json.dumps(classes),
        "sources": json.dumps(sources),
        "settings": json.dumps(settings),
        "admin_secret_hash": admin_secret_hash,
        "created_at": time.time(),
    }
    return db["studies"].insert(record).last_pk


def insert_items(db: sqlite_utils.Database, items: Iterable[dict[str, Any]]) -> None:
    """Add item rows (id, study_id, source, class, original_path, sha256, png_sha256)."""
    db["items"].insert_all(items)


def study_items(db: sqlite_utils.Database, study_id: int) -> list[dict[str, Any]]:
    """Every item of a study with its rowid (the order `study create` inserted them)."""
    return list(db["items"].rows_where("study_id = ?", [study_id], select="rowid, *", order_by="rowid"))


def item_count(db: sqlite_utils.Database, study_id: int) -> int:
    """How many items (tiles) a study has."""
    return db["items"].count_where("study_id = ?", [study_id])


def items_for_ordering(db: sqlite_utils.Database, study_id: int) -> list[tuple[str, str]]:
    """(item id, class) of a study's items in the canonical order that order secrets shuffle."""
    rows = db["items"].rows_where(
        "study_id = ?", [study_id], select="id, class", order_by="class, source, original_path"
    )
    return [(row["id"], row["class"]) for row in rows]


def set_admin_secret(db: sqlite_utils.Database, study_id: int, secret_hash: str) -> None:
    """Store a new admin secret hash and end the admin's open sessions."""
    db["studies"].update(study_id, {"admin_secret_hash": secret_hash})
    db["sessions"].delete_where("study_id = ? AND rater_id IS NULL", [study_id])


# --- raters and their orders ---------------------------------------------------------------


def rater_names(db: sqlite_utils.Database, study_id: int) -> list[str]:
    """Names of a study's raters in the order they were added."""
    return [row["name"] for row in db["raters"].rows_where("study_id = ?", [study_id], order_by="id")]


def rater_id(db: sqlite_utils.Database, study_id: int, name: str | None) -> int | None:
    """The id of the study's rater of that name, or None."""
    rows = list(db["raters"].rows_where("study_id = ? AND name = ?", [study_id, name], select="id"))
    return rows[0]["id"] if rows else None


def rater_secret_hash(db: sqlite_utils.Database, study_id: int, name: str) -> tuple[int, str] | None:
    """(id, secret hash) of the study's rater of that name, or None."""
    rows = list(
        db["raters"].rows_where("study_id = ? AND name = ?", [study_id, name], select="id, secret_hash")
    )
    return (rows[0]["id"], rows[0]["secret_hash"]) if rows else None


def insert_rater(
    db: sqlite_utils.Database,
    study_id: int,
    name: str,
    secret_hash: str,
    order_secret: str,
    showings: Iterable[tuple[str, int, str]],
    simulated: bool = False,
) -> int:
    """Add a rater and their order: `showings` are (item id, repeat, token) from position 1 on."""
    record = {
        "study_id": study_id,
        "name": name,
        "secret_hash": secret_hash,
        "order_secret": order_secret,
        "created_at": time.time(),
        "simulated": int(simulated),
    }
    new_id = db["raters"].insert(record).last_pk
    db["assignments"].insert_all(
        {"rater_id": new_id, "position": position, "item_id": item_id, "repeat": repeat, "token": token}
        for position, (item_id, repeat, token) in enumerate(showings, start=1)
    )
    return new_id


def set_rater_secret(db: sqlite_utils.Database, study_id: int, name: str, secret_hash: str) -> bool:
    """Store a rater's new secret hash and end their sessions; False when there is no such rater."""
    found = rater_id(db, study_id, name)
    if found is None:
        return False
    db["raters"].update(found, {"secret_hash": secret_hash})
    db["sessions"].delete_where("rater_id = ?", [found])
    return True


def orders(db: sqlite_utils.Database, study_id: int) -> dict[str, list[tuple[str, int]]]:
    """Each rater's stored order as (item id, repeat) per position, by rater name."""
    found: dict[str, list[tuple[str, int]]] = {}
    for row in db.query(
        """SELECT r.name, a.item_id, a.repeat FROM assignments a JOIN raters r ON r.id = a.rater_id
           WHERE r.study_id = ? ORDER BY r.id, a.position""",
        [study_id],
    ):
        found.setdefault(row["name"], []).append((row["item_id"], row["repeat"]))
    return found


def showings(db: sqlite_utils.Database, study_id: int) -> list[dict[str, Any]]:
    """Every showing of a study (rater, position, repeat, token, item_id, source, class) in order."""
    return list(
        db.query(
            """SELECT r.name AS rater, a.position, a.repeat, a.token, a.item_id, i.source, i.class
               FROM assignments a
               JOIN raters r ON r.id = a.rater_id JOIN items i ON i.id = a.item_id
               WHERE r.study_id = ? ORDER BY r.id, a.position""",
            [study_id],
        )
    )


def vote_count(db: sqlite_utils.Database, study_id: int, simulated: bool) -> int:
    """How many votes the study's simulated (or its real) raters have given."""
    query = """SELECT count(*) FROM votes v JOIN raters r ON r.id = v.rater_id
               WHERE r.study_id = ? AND r.simulated = ?"""
    return db.execute(query, [study_id, int(simulated)]).fetchone()[0]


def rater_record(db: sqlite_utils.Database, rater: int) -> RaterRecord | None:
    """A rater with the size of their order and the study's settings, or None."""
    rows = list(
        db.query(
            """SELECT r.id, r.study_id, r.name, s.settings,
                      (SELECT count(*) FROM assignments a WHERE a.rater_id = r.id) AS total
               FROM raters r JOIN studies s ON s.id = r.study_id WHERE r.id = ?""",
            [rater],
        )
    )
    if not rows:
        return None
    row = rows[0]
    return RaterRecord(
        row["id"], row["study_id"], row["name"], row["total"], StudySettings.from_json(row["settings"])
    )


def showing_classes(db: sqlite_utils.Database, rater: int) -> list[tuple[str, int]]:
    """(class, repeat) of each place of the rater's order, from position 1 on."""
    rows = db.query(
        """SELECT i.class, a.repeat FROM assignments a JOIN items i ON i.id = a.item_id
           WHERE a.rater_id = ? ORDER BY a.position""",
        [rater],
    )
    return [(row["class"], row["repeat"]) for row in rows]


def progress(db: sqlite_utils.Database, study_id: int) -> list[RaterProgress]:
    """Progress of every rater of a study, in the order they were added."""
    rows = db.query(
        """SELECT r.name,
                  (SELECT count(*) FROM votes v WHERE v.rater_id = r.id) AS answered,
                  (SELECT count(*) FROM assignments a WHERE a.rater_id = r.id) AS total,
                  (SELECT max(answered_at) FROM votes v WHERE v.rater_id = r.id) AS last_vote_at,
                  r.disabled_at, r.simulated
           FROM raters r WHERE r.study_id = ? ORDER BY r.id""",
        [study_id],
    )
    return [
        RaterProgress(
            r["name"], r["answered"], r["total"], r["last_vote_at"], r["disabled_at"], bool(r["simulated"])
        )
        for r in rows
    ]


@dataclass(frozen=True)
class VoteTiming:
    """When one rater's current votes were given."""

    rater: str
    votes: int
    first_at: float  # the earliest answered_at
    last_at: float
    in_window: int  # votes answered in (window_start, window_end]


def vote_timing(
    db: sqlite_utils.Database, study_id: int, window_start: float, window_end: float
) -> list[VoteTiming]:
    """Per rater who has voted: how many votes, the first and last answer, and how many fell in
    a time window. Only the votes table counts: a changed answer counts once, at its new time."""
    rows = db.execute(
        """SELECT r.name, count(*), min(v.answered_at), max(v.answered_at),
                  sum(v.answered_at > ? AND v.answered_at <= ?)
           FROM votes v JOIN raters r ON r.id = v.rater_id WHERE r.study_id = ? GROUP BY r.id""",
        [window_start, window_end, study_id],
    )
    return [VoteTiming(*row) for row in rows]


def reading_seconds(db: sqlite_utils.Database, study_id: int) -> dict[str, list[float]]:
    """Each rater's reading times (answered_at - shown_at of their current votes), ascending.

    Sorted by SQLite, so a median is one index away; SQLite's window functions would find the
    middle themselves but take three times as long on 100,000 votes.
    """
    found: dict[str, list[float]] = {}
    rows = db.execute(
        """SELECT r.name, v.answered_at - v.shown_at AS seconds FROM votes v
           JOIN raters r ON r.id = v.rater_id WHERE r.study_id = ? ORDER BY r.id, seconds""",
        [study_id],
    )
    for name, seconds in rows:
        found.setdefault(name, []).append(seconds)
    return found


def set_rater_disabled(
    db: sqlite_utils.Database, study_id: int, name: str, disabled_at: float | None
) -> bool:
    """Disable a rater (`disabled_at` set; their sessions end) or enable them again (None).

    Their assignments and votes stay. Returns False when the study has no rater of that name.
    """
    found = rater_id(db, study_id, name)
    if found is None:
        return False
    db["raters"].update(found, {"disabled_at": disabled_at})
    if disabled_at is not None:
        db["sessions"].delete_where("rater_id = ?", [found])
    return True


def rater_disabled(db: sqlite_utils.Database, rater: int) -> bool:
    """Whether an admin has disabled this rater."""
    row = db.execute("SELECT disabled_at FROM raters WHERE id = ?", [rater]).fetchone()
    return row is not None and row[0] is not None


# --- sessions ------------------------------------------------------------------------------


def insert_session(
    db: sqlite_utils.Database,
    token_hash: str,
    study_id: int,
    rater: int | None,
    now: float,
    expires_at: float,
) -> None:
    """Store a session (by token digest), dropping the expired ones on the way."""
    db["sessions"].delete_where("expires_at <= ?", [now])
    db["sessions"].insert(
        {
            "token_hash": token_hash,
            "study_id": study_id,
            "rater_id": rater,
            "created_at": now,
            "expires_at": expires_at,
        }
    )


def session_owner(
    db: sqlite_utils.Database, token_hash: str, now: float
) -> tuple[int, int | None, str | None] | None:
    """(study id, rater id, rater name) of a live session; ids and name are None for the admin.

    A disabled rater's session is no session, even if its row survived (disabling deletes it).
    """
    rows = list(
        db.query(
            """SELECT s.study_id, s.rater_id, r.name FROM sessions s
               LEFT JOIN raters r ON r.id = s.rater_id
               WHERE s.token_hash = ? AND s.expires_at > ?
                 AND (s.rater_id IS NULL OR r.disabled_at IS NULL)""",
            [token_hash, now],
        )
    )
    return (rows[0]["study_id"], rows[0]["rater_id"], rows[0]["name"]) if rows else None


def delete_session(db: sqlite_utils.Database, token_hash: str) -> None:
    """End one session."""
    db["sessions"].delete_where("token_hash = ?", [token_hash])


# --- the admin's record ------------------------------------------------------------------


@dataclass(frozen=True)
class AdminAction:
    """One thing an admin did to a study: who, what, to whom and when."""

    actor: str
    action: str
    target: str | None
    at: float


def record_admin_action(
    db: sqlite_utils.Database, study_id: int, actor: str, action: str, target: str | None = None
) -> None:
    """Append an action to the study's record; run it in the transaction of the change it records,
    so that a change is never without its record nor a record without its change."""
    db["admin_actions"].insert(
        {"study_id": study_id, "actor": actor, "action": action, "target": target, "at": time.time()}
    )


def admin_actions(db: sqlite_utils.Database, study_id: int) -> list[AdminAction]:
    """The study's recorded admin actions, oldest first."""
    rows = db["admin_actions"].rows_where(
        "study_id = ?", [study_id], order_by="at, id", select="actor, action, target, at"
    )
    return [AdminAction(**row) for row in rows]


# --- the vote path: hand-written SQL, run on every key press -------------------------------


def frontier(db: sqlite_utils.Database, rater: int) -> int | None:
    """The first place in the rater's order without a vote; None when the rater is done."""
    rows = db.execute(
        """SELECT min(a.position) FROM assignments a
           LEFT JOIN votes v ON v.rater_id = a.rater_id AND v.position = a.position
           WHERE a.rater_id = ? AND v.rater_id IS NULL""",
        [rater],
    ).fetchone()
    return rows[0]


def showing_for_token(
    db: sqlite_utils.Database, rater: int, token: str
) -> tuple[str, int, StudySettings] | None:
    """(item id, position, study settings) behind one of the rater's showing tokens, or None."""
    row = db.execute(
        """SELECT a.item_id, a.position, s.settings FROM assignments a
           JOIN raters r ON r.id = a.rater_id JOIN studies s ON s.id = r.study_id
           WHERE a.rater_id = ? AND a.token = ?""",
        [rater, token],
    ).fetchone()
    return (row[0], row[1], StudySettings.from_json(row[2])) if row else None


def tile_row(db: sqlite_utils.Database, rater: int, position: int) -> Tile | None:
    """The tile at a place of the rater's order, with its vote and the next showing's token."""
    rows = list(
        db.query(
            """SELECT a.position, a.item_id, a.token, v.vote, v.confidence,
                      (SELECT token FROM assignments n
                       WHERE n.rater_id = a.rater_id AND n.position = a.position + 1) AS next_token,
                      (SELECT count(*) FROM assignments t WHERE t.rater_id = a.rater_id) AS total,
                      (SELECT count(*) FROM votes c WHERE c.rater_id = a.rater_id) AS answered
               FROM assignments a
               LEFT JOIN votes v ON v.rater_id = a.rater_id AND v.position = a.position
               WHERE a.rater_id = ? AND a.position = ?""",
            [rater, position],
        )
    )
    return Tile(**rows[0]) if rows else None


def assignment_at(db: sqlite_utils.Database, rater: int, position: int) -> Assignment | None:
    """The item, token and repeat flag at a place of the rater's order, with the study's settings."""
    row = db.execute(
        """SELECT a.item_id, a.token, a.repeat, s.settings FROM assignments a
           JOIN raters r ON r.id = a.rater_id JOIN studies s ON s.id = r.study_id
           WHERE a.rater_id = ? AND a.position = ?""",
        [rater, position],
    ).fetchone()
    return Assignment(row[0], row[1], row[2], StudySettings.from_json(row[3])) if row else None


def vote_at(db: sqlite_utils.Database, rater: int, position: int) -> dict[str, Any] | None:
    """The stored vote row at a place of the rater's order, or None."""
    rows = list(db.query("SELECT * FROM votes WHERE rater_id = ? AND position = ?", [rater, position]))
    return rows[0] if rows else None


def insert_vote(db: sqlite_utils.Database, vote: dict[str, Any]) -> None:
    """Store a first vote (a row of `votes`)."""
    db.execute(
        """INSERT INTO votes (rater_id, position, item_id, repeat, vote, confidence, shown_at, answered_at)
           VALUES (:rater_id, :position, :item_id, :repeat, :vote, :confidence, :shown_at, :answered_at)""",
        vote,
    )


def replace_vote(
    db: sqlite_utils.Database,
    old: dict[str, Any],
    vote: str,
    confidence: int | None,
    shown_at: float,
    answered_at: float,
) -> None:
    """Change a stored vote, keeping the replaced one in `vote_history`."""
    db.execute(
        """INSERT INTO vote_history (rater_id, position, item_id, repeat, vote, confidence,
                                     shown_at, answered_at, replaced_at)
           VALUES (:rater_id, :position, :item_id, :repeat, :vote, :confidence,
                   :shown_at, :answered_at, :replaced_at)""",
        {**old, "replaced_at": answered_at},
    )
    db.execute(
        """UPDATE votes SET vote = ?, confidence = ?, shown_at = ?, answered_at = ?
           WHERE rater_id = ? AND position = ?""",
        [vote, confidence, shown_at, answered_at, old["rater_id"], old["position"]],
    )


def vote_rows(db: sqlite_utils.Database, study_id: int) -> list[dict[str, Any]]:
    """One dict per vote in the votes interchange columns, ordered by rater and position."""
    rows = db.query(
        """SELECT r.name AS rater, v.item_id AS item, i.class AS class, i.source AS source,
                  v.vote, v.confidence, v.repeat,
                  round(v.answered_at - v.shown_at, 3) AS seconds, v.position, r.simulated
           FROM votes v JOIN raters r ON r.id = v.rater_id JOIN items i ON i.id = v.item_id
           WHERE r.study_id = ? ORDER BY r.id, v.position""",
        [study_id],
    )
    return [dict(row) for row in rows]


def _study(row: dict[str, Any]) -> Study:
    return Study(
        id=row["id"],
        name=row["name"],
        seed=row["seed"],
        classes=json.loads(row["classes"]),
        sources=json.loads(row["sources"]),
        settings=StudySettings.from_json(row["settings"]),
        admin_secret_hash=row["admin_secret_hash"],
    )


# Each step takes a database of version N to N + 1, its statements in one transaction.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    # Orders drawn from a per-rater secret; older raters keep their (seed-derived) orders,
    # which `study audit` reports as derivable.
    1: ("ALTER TABLE raters ADD COLUMN order_secret TEXT",),
    # Raters an admin can disable, and the record of who did what from the admin page or CLI.
    2: (
        "ALTER TABLE raters ADD COLUMN disabled_at REAL",
        """CREATE TABLE admin_actions (
               id INTEGER PRIMARY KEY,
               study_id INTEGER NOT NULL REFERENCES studies(id),
               actor TEXT NOT NULL,
               action TEXT NOT NULL,
               target TEXT,
               at REAL NOT NULL
           )""",
        "CREATE INDEX admin_actions_study ON admin_actions(study_id, at)",
    ),
    # Simulated raters (`histosynth study simulate`), marked in every export and table.
    3: ("ALTER TABLE raters ADD COLUMN simulated INTEGER NOT NULL DEFAULT 0",),
}


def _ensure_schema(conn: sqlite3.Connection, db_path: Path, create: bool) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    while version in MIGRATIONS:
        conn.execute("BEGIN IMMEDIATE")
        if conn.execute("PRAGMA user_version").fetchone()[0] == version:  # not migrated meanwhile
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
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
