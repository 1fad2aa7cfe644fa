"""`histosynth study simulate`: raters who follow the binormal model, marked everywhere.

The model's promise (the share of correct calls is `accuracy`, confidence grows with the
evidence) is checked against the votes in the database by brute force, at chance and with a
planted effect; the marking is checked in the database, the export, the dashboard and every
file `evaluate ratings` writes.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import statistics

import numpy as np
import pytest

from histosynth.errors import StudyError
from rater_app import simulate
from rater_app.admin_ui import dashboard_html
from rater_app.create import create_study
from rater_app.dashboard import dashboard
from rater_app.export import vote_rows
from rater_app.raters import add_raters
from rater_app.simulate import SimulationSettings, simulate_study
from rater_app.store import connect, find_study, rater_id
from rater_app.voting import record_vote, tile_at
from tests.conftest import histosynth

NOW = 1_800_000_000.0


def make_study(tmp_path, make_pool, write_study, per_class: int = 3, **fields) -> str:
    sources = {
        "real": make_pool("real", classes=("ADI", "TUM"), per_class=per_class),
        "KLF8-DM": make_pool("klf8", classes=("ADI", "TUM"), per_class=per_class),
    }
    db = tmp_path / "study.db"
    create_study(write_study(sources, images_per_cell=per_class, **fields), db)
    return str(db)


def correct_share(rows: list[dict]) -> float:
    return float(np.mean([(row["vote"] == "real") == (row["source"] == "real") for row in rows]))


def test_raters_are_right_as_often_as_asked_and_surer_when_right(tmp_path, make_pool, write_study) -> None:
    # 20 raters x 80 tiles with independent votes (tile_spread 0): the share of correct calls
    # has a binomial s.e. of at most 0.0125, so 4 s.e. is 0.05.
    db = make_study(tmp_path, make_pool, write_study, per_class=20, confidence="6-point")
    for accuracy, seed in ((0.5, 1), (0.85, 2)):
        names = simulate_study(db, "pilot", SimulationSettings(20, accuracy, tile_spread=0.0, seed=seed), NOW)
        rows = [row for row in vote_rows(db, "pilot") if row["rater"] in names]
        assert len(rows) == 20 * 80
        assert abs(correct_share(rows) - accuracy) < 0.05, accuracy
    # with the planted effect, confident votes are right more often (the ROC curve bends)
    right = [row["confidence"] for row in rows if (row["vote"] == "real") == (row["source"] == "real")]
    wrong = [row["confidence"] for row in rows if (row["vote"] == "real") != (row["source"] == "real")]
    assert statistics.mean(right) > statistics.mean(wrong) + 1.0
    assert set(right) == set(range(1, 7))
    # reading times: log-normal around the median, every vote answered by `now`
    seconds = [row["seconds"] for row in rows]
    assert abs(statistics.median(seconds) - 6.0) < 0.6 and min(seconds) > 0
    with connect(db) as conn:
        assert conn.execute("SELECT max(answered_at) FROM votes").fetchone()[0] <= NOW


def test_a_tile_spread_makes_raters_agree_at_the_same_accuracy(tmp_path, make_pool, write_study) -> None:
    db = make_study(tmp_path, make_pool, write_study, per_class=20)
    agreement = {}
    for spread in (0.0, 1.0):
        names = simulate_study(db, "pilot", SimulationSettings(10, 0.7, tile_spread=spread, seed=3), NOW)
        rows = [row for row in vote_rows(db, "pilot") if row["rater"] in names]
        called = {}
        for row in rows:
            called.setdefault(row["item"], []).append(row["vote"] == "real")
        # share of rater pairs agreeing on a tile, averaged over tiles
        agreement[spread] = np.mean([np.mean(v) ** 2 + (1 - np.mean(v)) ** 2 for v in called.values()])
        assert abs(correct_share(rows) - 0.7) < 0.1  # clustered by tile: a looser bound
    assert agreement[1.0] > agreement[0.0] + 0.05


def test_the_votes_pass_every_check_of_the_app(tmp_path, make_pool, write_study) -> None:
    db = make_study(tmp_path, make_pool, write_study, repeats=2, confidence="none")
    names = simulate_study(db, "pilot", SimulationSettings(3, seed=5), NOW)
    assert names == ["sim-01", "sim-02", "sim-03"]
    assert simulate_study(db, "pilot", SimulationSettings(1), NOW) == ["sim-04"]  # numbered on
    rows = vote_rows(db, "pilot")
    assert len(rows) == 4 * (12 + 2) and {row["simulated"] for row in rows} == {1}
    assert {row["confidence"] for row in rows} == {None} and sum(row["repeat"] for row in rows) == 8
    with connect(db) as conn:
        study = find_study(conn, "pilot").id
        actions = conn.execute("SELECT actor, action FROM admin_actions").fetchall()
    assert actions == [("simulate", "rater.add")] * 4
    board = dashboard(db, study, now=NOW)
    assert all(row.simulated and row.done for row in board.raters)
    assert 'data-rater="sim-01" data-state="done"><td>sim-01' in dashboard_html(board)
    assert "<td>done (simulated)</td>" in dashboard_html(board)


def test_a_study_with_real_votes_is_refused_and_a_failure_leaves_nothing(
    tmp_path, make_pool, write_study, monkeypatch
) -> None:
    db = make_study(tmp_path, make_pool, write_study)
    real_calls = simulate.store_vote
    calls = []

    def failing_vote(*args, **kwargs):
        calls.append(1)
        if len(calls) == 20:
            raise OSError("disk full")
        return real_calls(*args, **kwargs)

    monkeypatch.setattr(simulate, "store_vote", failing_vote)
    with pytest.raises(OSError, match="disk full"):
        simulate_study(db, "pilot", SimulationSettings(3), NOW)
    with connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM raters").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM votes").fetchone()[0] == 0
    monkeypatch.undo()

    add_raters(db, "pilot", ["ann"])
    with connect(db) as conn:
        ann = rater_id(conn, find_study(conn, "pilot").id, "ann")
    record_vote(db, ann, 1, tile_at(db, ann, 1).token, "real", None, shown_at=NOW - 5)
    with pytest.raises(StudyError, match="study 'pilot' has 1 votes of real raters; simulate in a pilot"):
        simulate_study(db, "pilot", SimulationSettings(2), NOW)
    with pytest.raises(StudyError, match="--accuracy must lie strictly between 0 and 1, got 1.5"):
        SimulationSettings(2, accuracy=1.5)
    with pytest.raises(StudyError, match="--raters must be at least 1, got 0"):
        SimulationSettings(0)


def test_a_schema_3_database_gains_the_simulated_mark(tmp_path, make_pool, write_study) -> None:
    db = make_study(tmp_path, make_pool, write_study)
    add_raters(db, "pilot", ["ann"])
    with sqlite3.connect(db) as conn:  # as histosynth wrote it before simulated raters
        conn.execute("ALTER TABLE raters DROP COLUMN simulated")
        conn.execute("PRAGMA user_version = 3")
    simulate_study(db, "pilot", SimulationSettings(1), NOW)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 4
        assert conn.execute("SELECT name, simulated FROM raters").fetchall() == [("ann", 0), ("sim-01", 1)]


def test_every_file_made_from_simulated_votes_says_so(tmp_path, make_pool, write_study) -> None:
    db = make_study(tmp_path, make_pool, write_study, confidence="6-point", repeats=2)
    common = ["--db", db, "--study", "pilot"]
    bad = histosynth("study", "simulate", *common, "--raters", "3", "--accuracy", "2")
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
        "error: --accuracy must lie strictly between 0 and 1, got 2.0"
    ]
    made = histosynth("study", "simulate", *common, "--raters", "3", "--accuracy", "0.7")
    assert made.returncode == 0, made.stderr
    assert made.stdout == "study pilot: 3 simulated raters (sim-01 .. sim-03) rated every tile\n"
    status = histosynth("study", "status", *common)
    assert status.stdout.splitlines() == [f"sim-0{k}\t14/14\tdone simulated" for k in (1, 2, 3)]

    out = tmp_path / "ratings"
    rated = histosynth("evaluate", "ratings", *common, "--out", str(out), "--n-bootstrap", "20")
    assert rated.returncode == 0, rated.stderr
    assert "SIMULATED: 3 of 3 raters are simulated, not pathologists" in rated.stderr
    tables = sorted(out.glob("*.md"))
    assert len(tables) >= 8  # raters, scores, kappas, tests, roc, intra-rater, timing
    for table in tables:
        assert table.read_text().startswith("SIMULATED: 3 of 3 raters"), table.name
        assert "SIMULATED: 3 of 3 raters" in table.with_suffix(".tex").read_text(), table.name
        with table.with_suffix(".csv").open() as handle:
            rows = list(csv.DictReader(handle))
        assert rows and {row["simulated"] for row in rows} == {"True"}, table.name
    settings = json.loads((out / "ratings_settings.json").read_text())
    assert settings["simulated_raters"] == ["sim-01", "sim-02", "sim-03"]
