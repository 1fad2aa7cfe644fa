"""A rater's work: which tile comes next, and recording a vote so that it is never lost.

Everything here is plain database logic, independent of Gradio, so that the web app, the
tests and the load benchmark all go through the same checks: a vote is only accepted for the
tile at that place in this rater's own order, it is committed before the caller shows the
next tile, a repeated identical vote is a no-op, and a changed vote keeps its predecessor in
`vote_history`.

What a rater may see is decided here too, from the database alone (never from what a browser
sends): the first unanswered tile (the frontier), the answered tiles before it when the study
allows changes, and the bytes - not the page - of the tile after the frontier, so that the
browser can prefetch it. Votes land only on the frontier, or change an earlier answer.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import sqlite_utils

from histosynth.errors import StudyError
from rater_app.store import connect, transaction

VOTES = ("real", "synthetic")
CONFIDENCE_LEVELS = (1, 2, 3, 4, 5, 6)


class VoteRefused(StudyError):
    """The vote was not recorded (wrong item, changes not allowed, bad value)."""


@dataclass(frozen=True)
class RaterSettings:
    """The study settings that shape a rater's page."""

    rater_id: int
    study_id: int
    name: str
    total: int
    confidence: str
    allow_changes: bool


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


def rater_settings(db_path: str, rater_id: int) -> RaterSettings:
    """Settings and size of a rater's order."""
    with connect(db_path) as db:
        rows = list(
            db.query(
                """SELECT r.id, r.study_id, r.name, s.settings,
                          (SELECT count(*) FROM assignments a WHERE a.rater_id = r.id) AS total
                   FROM raters r JOIN studies s ON s.id = r.study_id WHERE r.id = ?""",
                [rater_id],
            )
        )
    if not rows:
        raise StudyError(f"no rater with id {rater_id}")
    row = rows[0]
    settings = json.loads(row["settings"])
    return RaterSettings(
        rater_id=row["id"],
        study_id=row["study_id"],
        name=row["name"],
        total=row["total"],
        confidence=settings["confidence"],
        allow_changes=settings["allow_changes"],
    )


def first_unanswered(db_path: str, rater_id: int) -> int | None:
    """The first place in the rater's order without a vote; None when the rater is done."""
    with connect(db_path) as db:
        return _frontier(db, rater_id)


def may_show(position: int, frontier: int | None, allow_changes: bool) -> bool:
    """Whether a rater may have the tile at `position` on screen (and vote on it).

    `frontier` is the first unanswered position (None when every tile is answered); every
    position before it is answered, because votes land only on the frontier.
    """
    if frontier is None or position < frontier:
        return allow_changes
    return position == frontier


def may_fetch(position: int, frontier: int | None, allow_changes: bool) -> bool:
    """Whether a rater may download the tile at `position`: what they may see, plus one prefetch."""
    return may_show(position, frontier, allow_changes) or (frontier is not None and position == frontier + 1)


def fetchable_item(db_path: str, rater_id: int, token: str) -> str | None:
    """The stored item behind one of this rater's showing tokens, when they may download it now."""
    with connect(db_path) as db:
        rows = list(
            db.query(
                """SELECT a.item_id, a.position, s.settings FROM assignments a
                   JOIN raters r ON r.id = a.rater_id JOIN studies s ON s.id = r.study_id
                   WHERE a.rater_id = ? AND a.token = ?""",
                [rater_id, token],
            )
        )
        if not rows:
            return None
        frontier = _frontier(db, rater_id)
    allow_changes = json.loads(rows[0]["settings"])["allow_changes"]
    return rows[0]["item_id"] if may_fetch(rows[0]["position"], frontier, allow_changes) else None


def tile_at(db_path: str, rater_id: int, position: int) -> Tile:
    """The tile at `position` of the rater's order, with its vote and the next tile's id."""
    with connect(db_path) as db:
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
                [rater_id, position],
            )
        )
    if not rows:
        raise VoteRefused(f"position {position} is not in this rater's order")
    return Tile(**rows[0])


def record_vote(
    db_path: str,
    rater_id: int,
    position: int,
    token: str,
    vote: str,
    confidence: int | None,
    shown_at: float,
    answered_at: float | None = None,
) -> bool:
    """Commit one vote; returns True when it was stored or changed, False for a repeat no-op.

    Args:
        position, token: the place in the rater's order and the token of the tile the rater
            saw there; both must match the stored order, so a stale or forged request cannot
            vote on another tile or another rater's item.
        vote: "real" or "synthetic".
        confidence: 1..6 when the study asks for it, else None.
        shown_at, answered_at: epoch seconds; answered_at defaults to now.

    Raises:
        VoteRefused: the item is not at that place in this rater's order, the place is after
            the first unanswered one, the value is bad, confidence is missing or unexpected,
            or the vote differs from a stored one in a study that does not allow changes.
    """
    if vote not in VOTES:
        raise VoteRefused(f"vote must be one of {', '.join(VOTES)}, got {vote!r}")
    answered_at = time.time() if answered_at is None else answered_at
    with connect(db_path) as db, transaction(db):
        rows = list(
            db.query(
                """SELECT a.item_id, a.token, a.repeat, s.settings FROM assignments a
                   JOIN raters r ON r.id = a.rater_id JOIN studies s ON s.id = r.study_id
                   WHERE a.rater_id = ? AND a.position = ?""",
                [rater_id, position],
            )
        )
        if not rows or rows[0]["token"] != token:
            raise VoteRefused("this tile is not assigned to this rater at that position")
        settings = json.loads(rows[0]["settings"])
        _check_confidence(confidence, settings["confidence"])
        previous = list(
            db.query("SELECT * FROM votes WHERE rater_id = ? AND position = ?", [rater_id, position])
        )
        frontier = _frontier(db, rater_id)
        if not previous and position != frontier:
            raise VoteRefused(f"answer the tiles in order: tile {frontier} is the first without an answer")
        if previous:
            old = previous[0]
            if old["vote"] == vote and old["confidence"] == confidence:
                return False
            if not settings["allow_changes"]:
                raise VoteRefused("this study does not allow changing a vote")
            db["vote_history"].insert({**old, "replaced_at": answered_at})
            db.execute(
                """UPDATE votes SET vote = ?, confidence = ?, shown_at = ?, answered_at = ?
                   WHERE rater_id = ? AND position = ?""",
                [vote, confidence, shown_at, answered_at, rater_id, position],
            )
            return True
        db["votes"].insert(
            {
                "rater_id": rater_id,
                "position": position,
                "item_id": rows[0]["item_id"],
                "repeat": rows[0]["repeat"],
                "vote": vote,
                "confidence": confidence,
                "shown_at": shown_at,
                "answered_at": answered_at,
            }
        )
    return True


def _frontier(db: sqlite_utils.Database, rater_id: int) -> int | None:
    rows = list(
        db.query(
            """SELECT min(a.position) AS position FROM assignments a
               LEFT JOIN votes v ON v.rater_id = a.rater_id AND v.position = a.position
               WHERE a.rater_id = ? AND v.rater_id IS NULL""",
            [rater_id],
        )
    )
    return rows[0]["position"]


def _check_confidence(confidence: int | None, scale: str) -> None:
    if scale == "none":
        if confidence is not None:
            raise VoteRefused("this study does not ask for a confidence rating")
        return
    if confidence not in CONFIDENCE_LEVELS:
        raise VoteRefused("choose a confidence from 1 (a guess) to 6 (certain) before voting")
