"""Votes out of the study database, in the votes interchange format of DESIGN.md.

The export is where provenance rejoins the votes: `source` and `class` come from the items
table, which the rater never saw. `evaluator` reads the same columns from any tool's CSV.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pandas as pd

from histosynth.files import atomic_write_text
from histosynth.votes import VOTE_COLUMNS
from rater_app import store
from rater_app.store import connect


def vote_rows(db_path: str | Path, study: str) -> list[dict]:
    """One dict per vote with the columns of `VOTE_COLUMNS`, ordered by rater and position."""
    with connect(db_path) as db:
        return store.vote_rows(db, store.find_study(db, study).id)


def votes_frame(db_path: str | Path, study: str) -> pd.DataFrame:
    """The study's votes as a DataFrame in the votes interchange format (for `evaluator`)."""
    frame = pd.DataFrame(vote_rows(db_path, study), columns=list(VOTE_COLUMNS))
    frame["confidence"] = frame["confidence"].astype("Int64")
    return frame


def export_votes(db_path: str | Path, study: str, out: str | Path | None = None) -> str:
    """Write the votes CSV to `out` (atomically) and return its text; `out=None` only returns it.

    The write goes through a temporary file and a rename, so a failed export leaves no
    half-written CSV.
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=VOTE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for vote in vote_rows(db_path, study):
        writer.writerow({key: "" if value is None else value for key, value in vote.items()})
    text = buffer.getvalue()
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text)
    return text
