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
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rater_app.create import create_study
from rater_app.raters import add_raters
from rater_app.voting import VoteRefused, record_vote, tile_at

from .simulated_rater import RatingClientError, SimulatedRater, simulated_rater

TOKEN = re.compile(r"tiles/([0-9a-f]{24})\.png")


def make_study(tmp_path, make_pool, write_study, **fields) -> tuple[Path, dict[str, str]]:
    sources = {"real": make_pool("real", per_class=3), "gen": make_pool("gen", per_class=3)}
    db = tmp_path / "study.db"
    create_study(write_study(sources, images_per_cell=3, **fields), db)
    return db, {r.name: r.secret for r in add_raters(str(db), "pilot", ["ann", "ben"])}


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


def vote_count(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM votes").fetchone()[0]


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
def test_a_curious_rater_gets_two_tiles_before_voting(
    tmp_path, make_pool, write_study, rating_server, allow_changes
) -> None:
    db, logins = make_study(tmp_path, make_pool, write_study, allow_changes=allow_changes)
    server = rating_server(db)
    rater = SimulatedRater(server.url, "ann", logins["ann"])
    rater.login()
    config = rater.client.get("/config").json()
    kinds = {c["id"]: c.get("type") for c in config["components"]}
    dependencies = config["dependencies"]
    assert len(dependencies) >= 6  # two loads, two votes, back, resume, refresh
    own, others = tokens_of(db, "ann"), tokens_of(db, "ben")
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
    assert vote_count(db) == 0  # nothing forged was taken as a vote
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
                if not vote_count(db):
                    learned |= set(TOKEN.findall(call(rater, dependency, data, session)))
    with sqlite3.connect(db) as conn:
        assert [row[0] for row in conn.execute("SELECT position FROM votes")] in ([], [1])
    assert learned <= set(own[:3]) and not obtainable(rater, set(others))


def test_votes_only_at_the_first_unanswered_tile(tmp_path, make_pool, write_study, rating_server) -> None:
    db, logins = make_study(tmp_path, make_pool, write_study)
    with sqlite3.connect(db) as conn:
        ann = conn.execute("SELECT id FROM raters WHERE name = 'ann'").fetchone()[0]
    last = tile_at(str(db), ann, 12)
    with pytest.raises(VoteRefused, match="answer the tiles in order: tile 1 is the first without an answer"):
        record_vote(str(db), ann, 12, last.token, "real", None, shown_at=0)
    assert vote_count(db) == 0
    server = rating_server(db)
    rater = simulated_rater(server.url, "ann", logins["ann"])
    rater.view = rater.view.__class__(12, last.token, "", "")  # a page claiming to show tile 12
    view = rater.vote("real")
    assert view.position == 1 and vote_count(db) == 0
    assert rater.client.get(f"/tiles/{last.token}.png").status_code == 404  # not even its bytes
    second = tile_at(str(db), ann, 2).token
    assert rater.client.get(f"/tiles/{second}.png").status_code == 200  # the prefetch


def test_tiles_have_one_length_and_repeats_other_bytes(
    tmp_path, make_pool, write_study, rating_server
) -> None:
    db, logins = make_study(tmp_path, make_pool, write_study, repeats=3)
    server = rating_server(db)
    rater = simulated_rater(server.url, "ann", logins["ann"])
    while rater.view.position is not None:
        rater.vote("real")
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT a.token, a.item_id, a.repeat FROM assignments a JOIN raters r ON r.id = a.rater_id"
            " WHERE r.name = 'ann' ORDER BY a.position"
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
