"""Navigation is bounded on the server: whatever a rater sends to whichever event, they see the first
unanswered tile, earlier answered ones (when changes are allowed) and one tile ahead, no more.

The rater here is a script with a login and the page config, calling every Gradio event of the app
directly, in fresh page sessions, with empty, stale and forged inputs.
"""

from __future__ import annotations

import io
import re
import secrets
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rater_app.create import create_study
from rater_app.voting import VoteRefused, record_vote, tile_at

from ..conftest import build_pool
from .conftest import fresh_raters, study_toml
from .simulated_rater import RatingClientError, SimulatedRater, simulated_rater

TOKEN = re.compile(r"tiles/([0-9a-f]{24})\.png")


@dataclass(frozen=True)
class Served:
    """A served study and two raters new to it: `ann` under test, `ben` whose tiles she must not get."""

    db: Path
    url: str
    ann: str
    ben: str
    secrets: dict[str, str]


@pytest.fixture(scope="module")
def serve(tmp_path_factory, module_rating_server) -> Callable[[bool], Served]:
    """serve(allow_changes) -> a served study of 12 tiles and 3 repeats, with two fresh raters.

    One server per setting for the whole module (a start costs seconds); every test takes raters
    of its own, so each starts at tile 1 with no votes, whatever ran before it.
    """
    started: dict[bool, tuple[Path, str]] = {}

    def served(allow_changes: bool) -> Served:
        if allow_changes not in started:
            folder = tmp_path_factory.mktemp(f"changes-{allow_changes}")
            sources = {pool: build_pool(folder / "pools" / pool, per_class=3) for pool in ("real", "gen")}
            db = folder / "study.db"
            toml = study_toml(folder, sources, images_per_cell=3, repeats=3, allow_changes=allow_changes)
            create_study(toml, db)
            started[allow_changes] = db, module_rating_server(db).url
        db, url = started[allow_changes]
        logins = fresh_raters(db, "ann", "ben")
        ann, ben = logins
        return Served(db, url, ann, ben, logins)

    return served


def tokens_of(db: Path, name: str) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [
            row[0]
            for row in conn.execute(
                "SELECT a.token FROM assignments a JOIN raters r ON r.id = a.rater_id"
                " WHERE r.name = ? ORDER BY a.position",
                [name],
            )
        ]


def votes_of(db: Path, name: str) -> list[int]:
    """The positions `name` has voted on."""
    with sqlite3.connect(db) as conn:
        return [
            row[0]
            for row in conn.execute(
                "SELECT v.position FROM votes v JOIN raters r ON r.id = v.rater_id WHERE r.name = ?", [name]
            )
        ]


def call(rater: SimulatedRater, dependency: dict, data: list, session: str) -> str:
    """Fire one event in page session `session`; the answer's text ('' when refused)."""
    body = {
        "data": data,
        "event_data": None,
        "fn_index": dependency["id"],
        "trigger_id": dependency["targets"][0][0],
        "session_hash": session,
    }
    rater.session_hash = session
    try:
        output = rater._queued(body) if dependency.get("queue") is not False else rater._direct(body)
    except RatingClientError as error:
        return str(error)
    return repr(output)


def forged_inputs(dependency: dict, kinds: dict[int, str], pool: list[str], level: int | None) -> list[list]:
    """Empty values, and `pool`'s tokens as the shown tile, for every input of an event."""
    variants = [[None] * len(dependency["inputs"]), [""] * len(dependency["inputs"])]
    for value in pool:
        variants.append(
            [
                value if kinds.get(i) == "textbox" else level if kinds.get(i) == "radio" else {"position": 9}
                for i in dependency["inputs"]
            ]
        )
    return variants


def obtainable(rater: SimulatedRater, tokens: set[str]) -> set[str]:
    """The tokens whose tile bytes the server hands out to this rater now."""
    return {token for token in tokens if rater.client.get(f"/tiles/{token}.png").status_code == 200}


@pytest.mark.parametrize("allow_changes", [True, False])
def test_a_curious_rater_gets_two_tiles_before_voting(serve, allow_changes) -> None:
    study = serve(allow_changes)
    db = study.db
    rater = SimulatedRater(study.url, study.ann, study.secrets[study.ann])
    rater.login()
    config = rater.client.get("/config").json()
    kinds = {c["id"]: c.get("type") for c in config["components"]}
    dependencies = config["dependencies"]
    assert len(dependencies) >= 6  # two loads, two votes, back, resume, refresh
    own, others = tokens_of(db, study.ann), tokens_of(db, study.ben)
    learned: set[str] = set()
    forged = [secrets.token_hex(12), others[0], others[5], own[-1], own[3], "../" + own[0]]
    # Phase 1: only empty and forged inputs, each event three times in each of two fresh sessions
    # (the second shows whatever the first left behind on the server).
    for _ in range(2):
        session = secrets.token_hex(5)
        for dependency in dependencies:
            for data in forged_inputs(dependency, kinds, forged, level=3):
                for _ in range(3 if dependency.get("queue") is False else 1):
                    learned |= set(TOKEN.findall(call(rater, dependency, data, session)))
    assert votes_of(db, study.ann) == []  # nothing forged was taken as a vote
    # Before the first vote: what was shown, and - as if tokens could be guessed - every
    # token of the rater's order, give the first tile and the one after it, nothing else.
    assert learned <= set(own[:2])
    got = obtainable(rater, set(own) | set(others) | learned)
    assert got == set(own[:2]), sorted(own.index(token) + 1 for token in got if token in own)
    # Phase 2: stale inputs (tokens shown in other sessions) in fresh sessions, up to a vote.
    for _ in range(3):
        session = secrets.token_hex(5)
        for dependency in reversed(dependencies):
            for data in forged_inputs(dependency, kinds, sorted(learned), level=None):
                if not votes_of(db, study.ann):
                    learned |= set(TOKEN.findall(call(rater, dependency, data, session)))
    assert votes_of(db, study.ann) in ([], [1])
    assert learned <= set(own[:3]) and not obtainable(rater, set(others))


def test_votes_only_at_the_first_unanswered_tile(serve) -> None:
    study = serve(True)
    db = study.db
    with sqlite3.connect(db) as conn:
        ann = conn.execute("SELECT id FROM raters WHERE name = ?", [study.ann]).fetchone()[0]
    last = tile_at(str(db), ann, 12)
    with pytest.raises(VoteRefused, match="answer the tiles in order: tile 1 is the first without an answer"):
        record_vote(str(db), ann, 12, last.token, "real", None, shown_at=0)
    assert votes_of(db, study.ann) == []
    rater = simulated_rater(study.url, study.ann, study.secrets[study.ann])
    rater.view = rater.view.__class__(12, last.token, "", "")  # a page claiming to show tile 12
    view = rater.vote("real")
    assert view.position == 1 and votes_of(db, study.ann) == []
    assert rater.client.get(f"/tiles/{last.token}.png").status_code == 404  # not even its bytes
    second = tile_at(str(db), ann, 2).token
    assert rater.client.get(f"/tiles/{second}.png").status_code == 200  # the prefetch


def test_tiles_have_one_length_and_repeats_other_bytes(serve) -> None:
    study = serve(True)
    db = study.db
    rater = simulated_rater(study.url, study.ann, study.secrets[study.ann])
    while rater.view.position is not None:
        rater.vote("real")
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT a.token, a.item_id, a.repeat FROM assignments a JOIN raters r ON r.id = a.rater_id"
            " WHERE r.name = ? ORDER BY a.position",
            [study.ann],
        ).fetchall()
    served = {token: rater.fetch_tile(token) for token, _, _ in rows}  # all answered: all may be reviewed
    assert len({len(body) for body in served.values()}) == 1
    assert len(set(served.values())) == len(rows)  # a hash tells no showing from another
    first_showing = {item: token for token, item, repeat in rows if not repeat}
    for token, item, repeat in rows:
        if repeat:
            again, first = served[token], served[first_showing[item]]
            assert again != first and len(again) == len(first)
            pixels = [np.asarray(Image.open(io.BytesIO(body))) for body in (again, first)]
            assert np.array_equal(*pixels)
    assert rater.fetch_tile(rows[0][0]) == served[rows[0][0]]  # stable per showing (caches stay valid)
