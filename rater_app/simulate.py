"""Simulated raters: a pilot database filled before any pathologist starts.

A researcher who has created a study wants to see the whole analysis - every table, the
figure, the ZIP - before asking pathologists for hours of their time. `simulate_study` adds
raters who vote on their own orders through the same checks as the web app (`store_vote`),
so the tables come from votes shaped exactly like real ones. Each simulated rater is marked
in the database (`raters.simulated`), the export carries a `simulated` column, and the
evaluator marks every table made from such votes: a pilot can never pass for a study.

The raters follow an equal-variance binormal model, the standard model of a reader study:
a tile shows a rater the evidence x = +-d/2 + u + e (plus for a real tile), where u ~ N(0, s)
is how real the tile itself looks (shared by all raters, so they agree as pathologists do)
and e ~ N(0, 1) is the rater's own noise on this showing. The rater calls a tile real when
x > 0 and is the more confident the farther x lies from 0. d is set so that the expected
share of correct calls is `accuracy`; at 0.5 nobody can tell real from synthetic, the
outcome a generator hopes for.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np

from histosynth.errors import StudyError
from histosynth.votes import REAL_SOURCE, REAL_VOTE, SYNTHETIC_VOTE
from rater_app import store
from rater_app.credentials import hash_secret, new_secret
from rater_app.raters import insert_raters
from rater_app.store import connect, transaction
from rater_app.voting import store_vote

NAME_PREFIX = "sim-"
ACTOR = "simulate"  # who the admin record names for the simulated raters
# Confidence steps 2..6 begin where |x| passes these multiples of x's standard deviation:
# about a sixth of the votes at each level, a confident rater's spread.
CONFIDENCE_CUTS = (0.2, 0.45, 0.75, 1.1, 1.6)
GAP_SECONDS = 0.5  # between an answer and the next tile's showing


@dataclass(frozen=True)
class SimulationSettings:
    """How the simulated raters behave.

    Attributes:
        raters: how many raters to add (named sim-01, sim-02, ... after any already there).
        accuracy: expected share of correct real/synthetic calls, in (0, 1); 0.5 is chance.
        tile_spread: standard deviation s of the shared "looks real" effect of a tile, in
            units of a rater's own noise; 0 makes raters independent (Fleiss' kappa near 0).
        median_seconds: median reading time of a tile (log-normal times, as readers' are).
        seed: seed of the votes and times (the orders are drawn as for any rater, secretly).
    """

    raters: int
    accuracy: float = 0.75
    tile_spread: float = 0.7
    median_seconds: float = 6.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.raters < 1:
            raise StudyError(f"--raters must be at least 1, got {self.raters}")
        if not 0.0 < self.accuracy < 1.0:
            raise StudyError(f"--accuracy must lie strictly between 0 and 1, got {self.accuracy}")
        if self.tile_spread < 0:
            raise StudyError(f"tile_spread must be >= 0, got {self.tile_spread}")
        if self.median_seconds <= 0:
            raise StudyError(f"median_seconds must be > 0, got {self.median_seconds}")


def simulate_study(
    db_path: str | Path, study: str, settings: SimulationSettings, now: float | None = None
) -> list[str]:
    """Add simulated raters to a study and let each rate every tile of their order.

    All of it is one transaction: either every simulated rater and vote lands, or nothing.

    Args:
        db_path: the study database.
        study: the study's name.
        settings: see `SimulationSettings`.
        now: when the last simulated vote is answered (default: the current time); each
            rater's votes run back from it at a reader's pace.

    Returns:
        The names of the raters added.

    Raises:
        StudyError: the study is missing, or real raters have voted in it (a pilot belongs in
            its own database: simulated votes beside real ones would only confuse).
    """
    rng = np.random.default_rng(settings.seed)
    now = time.time() if now is None else now
    with connect(db_path) as db:
        record = store.find_study(db, study)
        items = store.items_for_ordering(db, record.id)
        names = _next_names(store.rater_names(db, record.id), settings.raters)
    hashes = {name: hash_secret(new_secret()) for name in names}  # secrets nobody holds
    looks_real = {item_id: rng.normal(0.0, settings.tile_spread) for item_id, _ in items}
    spread = math.sqrt(1.0 + settings.tile_spread**2)
    half_distance = NormalDist().inv_cdf(settings.accuracy) * spread
    with connect(db_path) as db, transaction(db):
        real_votes = store.vote_count(db, record.id, simulated=False)  # in the transaction: no race
        if real_votes:
            raise StudyError(
                f"study {study!r} has {real_votes} votes of real raters; simulate in a pilot database "
                "(create the study again with another --db), not beside them"
            )
        insert_raters(db, record, items, hashes, ACTOR, simulated=True)
        showings: dict[str, list[dict]] = {name: [] for name in names}
        for row in store.showings(db, record.id):
            showings.get(row["rater"], []).append(row)
        for name, own in showings.items():
            rater = store.rater_id(db, record.id, name)
            reading = rng.lognormal(math.log(settings.median_seconds), 0.5, len(own))
            steps = reading + GAP_SECONDS
            answered = now - (np.cumsum(steps[::-1])[::-1] - steps)  # the last one at `now`
            for row, seconds, answered_at in zip(own, reading, answered, strict=True):
                sign = 1.0 if row["source"] == REAL_SOURCE else -1.0
                evidence = sign * half_distance + looks_real[row["item_id"]] + rng.normal()
                vote = REAL_VOTE if evidence > 0 else SYNTHETIC_VOTE
                confidence = _confidence(abs(evidence) / spread, record.settings.confidence)
                shown_at = float(answered_at - seconds)
                store_vote(
                    db, rater, row["position"], row["token"], vote, confidence, shown_at, float(answered_at)
                )
    return names


def _confidence(distance: float, scale: str) -> int | None:
    """1..6 from how far the evidence lies from the decision point; None without a scale."""
    if scale == "none":
        return None
    return 1 + sum(distance > cut for cut in CONFIDENCE_CUTS)


def _next_names(existing: list[str], count: int) -> list[str]:
    """sim-01, sim-02, ...: numbered after the simulated raters already in the study."""
    pattern = re.compile(rf"^{re.escape(NAME_PREFIX)}(\d+)$")
    taken = [int(match.group(1)) for name in existing if (match := pattern.match(name))]
    start = max(taken, default=0) + 1
    width = max(2, len(str(start + count - 1)))
    return [f"{NAME_PREFIX}{number:0{width}d}" for number in range(start, start + count)]
