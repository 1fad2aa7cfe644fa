"""Per-rater orders and the vote path, without a browser: the rules the app relies on."""

from __future__ import annotations

import csv
import io
import sqlite3
from pathlib import Path

import pytest

from histosynth.errors import StudyError
from rater_app.create import create_study
from rater_app.export import export_votes, votes_frame
from rater_app.raters import add_raters, list_raters, rater_order, reset_secrets, study_status
from rater_app.voting import VoteRefused, first_unanswered, record_vote, tile_at

from ..conftest import histosynth


def make_study(tmp_path, make_pool, write_study, **fields) -> Path:
    classes = ("ADI", "BACK", "TUM")
    sources = {
        "real": make_pool("real", classes=classes, per_class=3),
        "KLF8-DM": make_pool("klf8", classes=classes, per_class=3),
        "styleGAN2": make_pool("sg2", classes=classes, per_class=3),
    }
    db = tmp_path / "study.db"
    create_study(write_study(sources, **fields), db)
    return db


def orders(db: Path) -> dict[str, list[tuple[str, int, str]]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            """SELECT r.name, a.item_id, a.repeat, i.class FROM assignments a
               JOIN raters r ON r.id = a.rater_id JOIN items i ON i.id = a.item_id
               ORDER BY r.name, a.position"""
        )
        result: dict[str, list] = {}
        for name, item, repeat, class_name in rows:
            result.setdefault(name, []).append((item, repeat, class_name))
    return result


def rater_id(db: Path, name: str) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT id FROM raters WHERE name = ?", [name]).fetchone()[0]


def test_orders_are_per_rater_blocked_and_complete(tmp_path, make_pool, write_study) -> None:
    db = make_study(tmp_path, make_pool, write_study)
    add_raters(str(db), "pilot", ["ann", "ben"])
    by_rater = orders(db)
    ann, ben = by_rater["ann"], by_rater["ben"]
    assert len(ann) == len(ben) == 18
    assert sorted(ann) == sorted(ben) and ann != ben
    assert [c for _, _, c in ann] == ["ADI"] * 6 + ["BACK"] * 6 + ["TUM"] * 6


def test_order_is_a_function_of_the_order_secret() -> None:
    items = [(f"id{i:02d}", "ADI" if i < 10 else "TUM") for i in range(20)]
    kwargs = {"classes": ["ADI", "TUM"], "block_by_class": False, "repeats": 0}
    first = rater_order(items, order_secret="a" * 32, **kwargs)
    assert first == rater_order(items, order_secret="a" * 32, **kwargs)
    assert first != rater_order(items, order_secret="b" * 32, **kwargs)
    classes = [dict(items)[entry.item_id] for entry in first]
    assert classes != sorted(classes)  # unblocked: classes are mixed


def test_repeats_come_last_as_second_showings(tmp_path, make_pool, write_study) -> None:
    db = make_study(tmp_path, make_pool, write_study, repeats=4)
    add_raters(str(db), "pilot", ["ann"])
    order = orders(db)["ann"]
    assert len(order) == 22 and [r for _, r, _ in order] == [0] * 18 + [1] * 4
    firsts = {item for item, r, _ in order if r == 0}
    assert {item for item, r, _ in order if r == 1} <= firsts
    with sqlite3.connect(db) as conn:
        tokens = [row[0] for row in conn.execute("SELECT token FROM assignments")]
    assert len(set(tokens)) == len(tokens) == 22  # a repeat is shown under a URL of its own


def test_rater_names(tmp_path, make_pool, write_study) -> None:
    db = str(make_study(tmp_path, make_pool, write_study))
    add_raters(db, "pilot", ["ann"])
    for names, message in [
        (["ann"], "already has a rater named 'ann'"),
        (["admin"], "reserved"),
        (["bad\tname"], "must be"),
        (["cy", "cy"], "given twice"),
    ]:
        with pytest.raises(StudyError, match=message):
            add_raters(db, "pilot", names)
    with pytest.raises(StudyError, match="no study named 'nope'"):
        add_raters(db, "nope", ["dan"])
    assert list_raters(db, "pilot") == ["ann"]


def test_votes_are_checked_and_committed(tmp_path, make_pool, write_study) -> None:
    db = make_study(tmp_path, make_pool, write_study)
    other = {"real": make_pool("other-real"), "gen": make_pool("other-gen")}
    create_study(write_study(other, name="other", file_name="other.toml"), db)
    add_raters(str(db), "pilot", ["ann", "ben"])
    ann, ben = rater_id(db, "ann"), rater_id(db, "ben")
    first = tile_at(str(db), ann, 1)
    assert first.answered == 0 and first.vote is None and first.next_token == tile_at(str(db), ann, 2).token
    assert record_vote(str(db), ann, 1, first.token, "real", None, shown_at=100.0, answered_at=103.5)
    assert not record_vote(str(db), ann, 1, first.token, "real", None, shown_at=100.0)  # double click
    assert first_unanswered(str(db), ann) == 2
    second = tile_at(str(db), ann, 2)
    with pytest.raises(VoteRefused, match="not assigned"):
        record_vote(str(db), ann, 2, first.token, "real", None, shown_at=0)  # wrong item for position
    with sqlite3.connect(db) as conn:
        other_study_item = conn.execute("SELECT id FROM items WHERE study_id != 1 LIMIT 1").fetchone()[0]
    with pytest.raises(VoteRefused, match="not assigned"):
        record_vote(str(db), ann, 2, other_study_item, "real", None, shown_at=0)
    not_bens_first = next(
        token for token in (first.token, second.token) if token != tile_at(str(db), ben, 1).token
    )
    with pytest.raises(VoteRefused, match="not assigned"):
        record_vote(str(db), ben, 1, not_bens_first, "real", None, shown_at=0)
    with pytest.raises(VoteRefused, match="not assigned"):
        record_vote(str(db), ann, 999, second.token, "real", None, shown_at=0)
    with pytest.raises(VoteRefused, match="vote must be"):
        record_vote(str(db), ann, 2, second.token, "maybe", None, shown_at=0)
    with pytest.raises(VoteRefused, match="does not ask for a confidence"):
        record_vote(str(db), ann, 2, second.token, "real", 3, shown_at=0)
    # a changed vote is kept in the history
    assert record_vote(str(db), ann, 1, first.token, "synthetic", None, shown_at=110.0, answered_at=111.0)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT vote FROM votes WHERE rater_id = ?", [ann]).fetchall() == [("synthetic",)]
        assert conn.execute("SELECT vote, answered_at FROM vote_history").fetchall() == [("real", 103.5)]
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(
                "INSERT INTO votes (rater_id, position, item_id, repeat, vote, shown_at, answered_at)"
                " VALUES (?, 1, ?, 0, 'real', 0, 0)",
                [ann, first.item_id],
            )


def test_changes_refused_when_not_allowed_and_confidence_required(tmp_path, make_pool, write_study) -> None:
    db = str(make_study(tmp_path, make_pool, write_study, allow_changes=False, confidence="6-point"))
    add_raters(db, "pilot", ["ann"])
    ann = rater_id(Path(db), "ann")
    item = tile_at(db, ann, 1).token
    with pytest.raises(VoteRefused, match="choose a confidence"):
        record_vote(db, ann, 1, item, "real", None, shown_at=0)
    with pytest.raises(VoteRefused, match="choose a confidence"):
        record_vote(db, ann, 1, item, "real", 7, shown_at=0)
    record_vote(db, ann, 1, item, "real", 6, shown_at=0)
    with pytest.raises(VoteRefused, match="does not allow changing"):
        record_vote(db, ann, 1, item, "synthetic", 6, shown_at=0)


def test_status_and_export(tmp_path, make_pool, write_study) -> None:
    db = make_study(tmp_path, make_pool, write_study, confidence="6-point")
    add_raters(str(db), "pilot", ["ann", "ben"])
    ann = rater_id(db, "ann")
    for position in (1, 2, 3):
        tile = tile_at(str(db), ann, position)
        record_vote(str(db), ann, position, tile.token, "real", position, shown_at=10.0, answered_at=12.25)
    assert [(p.rater, p.answered, p.total, p.done) for p in study_status(db, "pilot")] == [
        ("ann", 3, 18, False),
        ("ben", 0, 18, False),
    ]
    rows = list(csv.DictReader(io.StringIO(export_votes(db, "pilot"))))
    assert [r["position"] for r in rows] == ["1", "2", "3"] and rows[0]["seconds"] == "2.25"
    assert {r["source"] for r in rows} <= {"real", "KLF8-DM", "styleGAN2"}
    assert rows[1]["confidence"] == "2" and rows[0]["vote"] == "real" and rows[0]["repeat"] == "0"
    frame = votes_frame(db, "pilot")
    assert list(frame["item"]) == [r["item"] for r in rows]
    with sqlite3.connect(db) as conn:
        truth = dict(conn.execute("SELECT id, source FROM items"))
    assert all(truth[r["item"]] == r["source"] for r in rows)


def test_cli_raters_status_export(tmp_path, make_pool, write_study) -> None:
    db = make_study(tmp_path, make_pool, write_study)
    result = histosynth("study", "raters", "add", "ann", "ben", "--db", str(db), "--study", "pilot")
    assert result.returncode == 0, result.stderr
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert [fields[0] for fields in lines] == ["ann", "ben"]
    assert all(len(f) == 3 and f[2].endswith(f"/login?name={f[0]}") and len(f[1]) >= 16 for f in lines)
    listed = histosynth("study", "raters", "list", "--db", str(db), "--study", "pilot")
    assert listed.stdout.split() == ["ann", "ben"]
    status = histosynth("study", "status", "--db", str(db), "--study", "pilot")
    assert status.stdout.splitlines() == ["ann\t0/18", "ben\t0/18"]
    out = tmp_path / "votes.csv"
    exported = histosynth("study", "export", "--db", str(db), "--study", "pilot", "--out", str(out))
    assert exported.returncode == 0
    header = "rater,item,class,source,vote,confidence,repeat,seconds,position,simulated"
    assert out.read_text().splitlines() == [header]
    missing = histosynth("study", "status", "--db", str(tmp_path / "typo.db"), "--study", "pilot")
    assert missing.returncode == 1 and "typo.db: study database does not exist" in missing.stderr
    assert not (tmp_path / "typo.db").exists()


def test_reset_secrets(tmp_path, make_pool, write_study) -> None:
    db = str(make_study(tmp_path, make_pool, write_study))
    add_raters(db, "pilot", ["ann"])
    with pytest.raises(StudyError, match="no rater named 'zed'"):
        reset_secrets(db, "pilot", ["zed"])
    assert reset_secrets(db, "pilot", ["ann"])[0].name == "ann"
