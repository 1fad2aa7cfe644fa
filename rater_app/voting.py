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

import time
from dataclasses import dataclass

import sqlite_utils

from histosynth.errors import StudyError
from histosynth.votes import VOTE_VALUES
from rater_app import store
from rater_app.blocks import Block, order_blocks
from rater_app.store import Tile, connect, transaction

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
    block_by_class: bool
    instructions: str | None


def rater_settings(db_path: str, rater_id: int) -> RaterSettings:
    """Settings and size of a rater's order."""
    with connect(db_path) as db:
        record = store.rater_record(db, rater_id)
    if record is None:
        raise StudyError(f"no rater with id {rater_id}")
    return RaterSettings(
        rater_id=record.id,
        study_id=record.study_id,
        name=record.name,
        total=record.total,
        confidence=record.settings.confidence,
        allow_changes=record.settings.allow_changes,
        block_by_class=record.settings.block_by_class,
        instructions=record.settings.instructions,
    )


def rater_blocks(db_path: str, rater_id: int, block_by_class: bool) -> list[Block]:
    """The blocks of the rater's order (none unless the study is rated class by class)."""
    if not block_by_class:
        return []
    with connect(db_path) as db:
        return order_blocks(store.showing_classes(db, rater_id), block_by_class)


def first_unanswered(db_path: str, rater_id: int) -> int | None:
    """The first place in the rater's order without a vote; None when the rater is done."""
    with connect(db_path) as db:
        return store.frontier(db, rater_id)


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
        showing = store.showing_for_token(db, rater_id, token)
        if showing is None:
            return None
        frontier = store.frontier(db, rater_id)
    item_id, position, settings = showing
    return item_id if may_fetch(position, frontier, settings.allow_changes) else None


def tile_at(db_path: str, rater_id: int, position: int) -> Tile:
    """The tile at `position` of the rater's order, with its vote and the next tile's id."""
    with connect(db_path) as db:
        tile = store.tile_row(db, rater_id, position)
    if tile is None:
        raise VoteRefused(f"position {position} is not in this rater's order")
    return tile


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
    with connect(db_path) as db, transaction(db):
        return store_vote(db, rater_id, position, token, vote, confidence, shown_at, answered_at)


def store_vote(
    db: sqlite_utils.Database,
    rater_id: int,
    position: int,
    token: str,
    vote: str,
    confidence: int | None,
    shown_at: float,
    answered_at: float | None = None,
) -> bool:
    """`record_vote` inside the caller's transaction (same checks, same result)."""
    if vote not in VOTE_VALUES:
        raise VoteRefused(f"vote must be one of {', '.join(VOTE_VALUES)}, got {vote!r}")
    answered_at = time.time() if answered_at is None else answered_at
    assignment = store.assignment_at(db, rater_id, position)
    if assignment is None or assignment.token != token:
        raise VoteRefused("this tile is not assigned to this rater at that position")
    _check_confidence(confidence, assignment.settings.confidence)
    old = store.vote_at(db, rater_id, position)
    frontier = store.frontier(db, rater_id)
    if old is None and position != frontier:
        raise VoteRefused(f"answer the tiles in order: tile {frontier} is the first without an answer")
    if old is not None:
        if old["vote"] == vote and old["confidence"] == confidence:
            return False
        if not assignment.settings.allow_changes:
            raise VoteRefused("this study does not allow changing a vote")
        store.replace_vote(db, old, vote, confidence, shown_at, answered_at)
        return True
    store.insert_vote(
        db,
        {
            "rater_id": rater_id,
            "position": position,
            "item_id": assignment.item_id,
            "repeat": assignment.repeat,
            "vote": vote,
            "confidence": confidence,
            "shown_at": shown_at,
            "answered_at": answered_at,
        },
    )
    return True


def _check_confidence(confidence: int | None, scale: str) -> None:
    if scale == "none":
        if confidence is not None:
            raise VoteRefused("this study does not ask for a confidence rating")
        return
    if confidence not in CONFIDENCE_LEVELS:
        raise VoteRefused("choose a confidence from 1 (a guess) to 6 (certain) before voting")
