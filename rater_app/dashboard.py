"""What the admin's dashboard shows, computed from the study database alone.

Pure functions of the database and a clock (`now` is a parameter), so the numbers can be
tested against planted timestamps and the page only renders them. Nothing here names a
source, pool or file: the settings list the number of sources, not their names (the admin
page is the kind of screen that gets shared in a meeting, and following a study needs no
names; the study TOML has them). See docs/threat-model.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rater_app import store
from rater_app.store import RaterProgress, VoteTiming, connect

IDLE_SECONDS = 15 * 60  # a rater who started and has not voted for this long is shown as idle
HOUR = 3600.0
RATE_EVIDENCE_SECONDS = HOUR  # a pace per hour is shown once the votes span this long


@dataclass(frozen=True)
class RaterRow:
    """One rater's line on the dashboard."""

    name: str
    answered: int
    total: int
    last_vote_at: float | None
    votes_last_hour: int
    votes_per_hour: float | None  # over first to last vote; None until they span an hour
    median_seconds: float | None  # median time from a tile shown to its answer; None without votes
    idle: bool  # started, not done, not disabled, and no vote for `idle_seconds`
    disabled: bool
    simulated: bool  # a rater of `histosynth study simulate`

    @property
    def done(self) -> bool:
        return self.answered == self.total


@dataclass(frozen=True)
class StudyFacts:
    """The study's settings as the dashboard lists them (no source names, see the module doc)."""

    name: str
    block_by_class: bool
    confidence: str
    allow_changes: bool
    repeats: int
    images_per_cell: int | None
    n_classes: int
    n_sources: int
    n_items: int


@dataclass(frozen=True)
class Dashboard:
    """Everything of one dashboard refresh, as of `now`."""

    now: float
    idle_seconds: float
    study: StudyFacts
    raters: list[RaterRow]
    votes_last_hour: int
    votes_per_hour: float | None  # the whole study, first to last vote; None until an hour of votes
    median_seconds: float | None

    @property
    def idle(self) -> list[tuple[str, float]]:
        """The idle raters with how long each has been quiet, in seconds, longest first."""
        quiet = [(row.name, self.now - row.last_vote_at) for row in self.raters if row.idle]
        return sorted(quiet, key=lambda entry: -entry[1])

    @property
    def answered(self) -> int:
        return sum(row.answered for row in self.raters)

    @property
    def total(self) -> int:
        return sum(row.total for row in self.raters)


def dashboard(
    db_path: str | Path, study_id: int, now: float | None = None, idle_seconds: float = IDLE_SECONDS
) -> Dashboard:
    """The dashboard of one study as of `now` (default: the current time).

    Args:
        db_path: the study database.
        study_id: the study's id.
        now: the time the dashboard is for; tests plant it.
        idle_seconds: how long without a vote makes a started, unfinished rater idle.
    """
    now = time.time() if now is None else now
    with connect(db_path) as db:
        record = store.study_by_id(db, study_id)
        progress = store.progress(db, study_id)
        timings = {timing.rater: timing for timing in store.vote_timing(db, study_id, now - HOUR, now)}
        readings = store.reading_seconds(db, study_id)
        n_items = store.item_count(db, study_id)
    rows = [
        _rater_row(entry, timings.get(entry.rater), readings.get(entry.rater, []), now, idle_seconds)
        for entry in progress
    ]
    everyone = _whole_study(list(timings.values()))
    # each rater's list is sorted, so this sort only merges runs
    all_readings = sorted(seconds for values in readings.values() for seconds in values)
    settings = record.settings
    facts = StudyFacts(
        name=record.name,
        block_by_class=settings.block_by_class,
        confidence=settings.confidence,
        allow_changes=settings.allow_changes,
        repeats=settings.repeats,
        images_per_cell=settings.images_per_cell,
        n_classes=len(record.classes),
        n_sources=len(record.sources),
        n_items=n_items,
    )
    return Dashboard(
        now=now,
        idle_seconds=idle_seconds,
        study=facts,
        raters=rows,
        votes_last_hour=0 if everyone is None else everyone.in_window,
        votes_per_hour=None if everyone is None else _rate(everyone),
        median_seconds=_median(all_readings),
    )


def _rater_row(
    entry: RaterProgress, timing: VoteTiming | None, readings: list[float], now: float, idle_seconds: float
) -> RaterRow:
    started, done = entry.answered > 0, entry.answered == entry.total
    quiet = entry.last_vote_at is not None and now - entry.last_vote_at >= idle_seconds
    return RaterRow(
        name=entry.rater,
        answered=entry.answered,
        total=entry.total,
        last_vote_at=entry.last_vote_at,
        votes_last_hour=0 if timing is None else timing.in_window,
        votes_per_hour=None if timing is None else _rate(timing),
        median_seconds=_median(readings),
        idle=started and not done and not entry.disabled and quiet,
        disabled=entry.disabled,
        simulated=entry.simulated,
    )


def _whole_study(timings: list[VoteTiming]) -> VoteTiming | None:
    """The study's timing from its raters' (None before the first vote)."""
    if not timings:
        return None
    return VoteTiming(
        rater="",
        votes=sum(t.votes for t in timings),
        first_at=min(t.first_at for t in timings),
        last_at=max(t.last_at for t in timings),
        in_window=sum(t.in_window for t in timings),
    )


def _median(ascending: list[float]) -> float | None:
    """The median of an ascending list: the middle value, or the mean of the middle two."""
    if not ascending:
        return None
    middle = len(ascending) // 2
    return ascending[middle] if len(ascending) % 2 else (ascending[middle - 1] + ascending[middle]) / 2


def _rate(timing: VoteTiming) -> float | None:
    """Votes per hour between the first and the last vote ((n - 1) gaps over their span): the
    pace while rating, which an average since the study began would dilute with the days
    before a rater started. None until the votes span an hour: four votes in three seconds
    are not a pace of 4975 an hour."""
    span = timing.last_at - timing.first_at
    if timing.votes < 2 or span < RATE_EVIDENCE_SECONDS:
        return None
    return (timing.votes - 1) / span * HOUR
