"""Progress and votes out of the study database, in the votes interchange format of DESIGN.md.

The export is where provenance rejoins the votes: `source` and `class` come from the items
table, which the rater never saw. `evaluator` reads the same columns from any tool's CSV.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from rater_app.store import connect, study_row

VOTE_COLUMNS = ["rater", "item", "class", "source", "vote", "confidence", "repeat", "seconds", "position"]


@dataclass(frozen=True)
class RaterProgress:
    """How far one rater has come."""

    rater: str
    answered: int
    total: int
    last_vote_at: float | None

    @property
    def done(self) -> bool:
        return self.answered == self.total


def study_status(db_path: str | Path, study: str) -> list[RaterProgress]:
    """Progress of every rater of a study, in the order they were added."""
    with connect(db_path) as db:
        row = study_row(db, study)
        rows = db.query(
            """SELECT r.name,
                      (SELECT count(*) FROM votes v WHERE v.rater_id = r.id) AS answered,
                      (SELECT count(*) FROM assignments a WHERE a.rater_id = r.id) AS total,
                      (SELECT max(answered_at) FROM votes v WHERE v.rater_id = r.id) AS last_vote_at
               FROM raters r WHERE r.study_id = ? ORDER BY r.id""",
            [row["id"]],
        )
        return [RaterProgress(r["name"], r["answered"], r["total"], r["last_vote_at"]) for r in rows]


def vote_rows(db_path: str | Path, study: str) -> list[dict]:
    """One dict per vote with the columns of `VOTE_COLUMNS`, ordered by rater and position."""
    with connect(db_path) as db:
        row = study_row(db, study)
        rows = db.query(
            """SELECT r.name AS rater, v.item_id AS item, i.class AS class, i.source AS source,
                      v.vote, v.confidence, v.repeat,
                      round(v.answered_at - v.shown_at, 3) AS seconds, v.position
               FROM votes v JOIN raters r ON r.id = v.rater_id JOIN items i ON i.id = v.item_id
               WHERE r.study_id = ? ORDER BY r.id, v.position""",
            [row["id"]],
        )
        return [dict(r) for r in rows]


def votes_frame(db_path: str | Path, study: str) -> pd.DataFrame:
    """The study's votes as a DataFrame in the votes interchange format (for `evaluator`)."""
    frame = pd.DataFrame(vote_rows(db_path, study), columns=VOTE_COLUMNS)
    frame["confidence"] = frame["confidence"].astype("Int64")
    return frame


def export_votes(db_path: str | Path, study: str, out: str | Path | None = None) -> str:
    """Write the votes CSV to `out` (atomically) and return its text; `out=None` only returns it."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=VOTE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for vote in vote_rows(db_path, study):
        writer.writerow({key: "" if value is None else value for key, value in vote.items()})
    text = buffer.getvalue()
    if out is not None:
        _write_atomically(Path(out), text)
    return text


def _write_atomically(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a failed export leaves no half-written CSV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as stream:
            stream.write(text)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
