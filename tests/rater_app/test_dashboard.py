"""The admin dashboard's numbers, against a real SQLite study with planted vote times.

Each expected value is recomputed by brute force from the planted (shown, answered) times,
independently of the SQL and the helpers in `rater_app.dashboard`.
"""

from __future__ import annotations

import random
import statistics
import threading

from rater_app import audit_job
from rater_app.admin_ui import dashboard_html
from rater_app.audit_job import AuditJob
from rater_app.create import create_study
from rater_app.dashboard import HOUR, dashboard
from rater_app.raters import add_raters, set_disabled
from rater_app.store import connect, find_study, rater_id
from rater_app.voting import record_vote, tile_at

NOW = 1_800_000_000.0


def make_study(tmp_path, make_pool, write_study, **fields):
    sources = {
        "real": make_pool("real", classes=("ADI", "TUM"), per_class=3),
        "KLF8-DM": make_pool("klf8", classes=("ADI", "TUM"), per_class=3),
    }
    db = tmp_path / "study.db"
    create_study(write_study(sources, images_per_cell=3, **fields), db)
    return str(db)


def plant_votes(db: str, name: str, times: list[tuple[float, float]]) -> None:
    """Vote at positions 1..len(times) with the given (shown_at, answered_at)."""
    with connect(db) as conn:
        rater = rater_id(conn, find_study(conn, "pilot").id, name)
    for position, (shown_at, answered_at) in enumerate(times, start=1):
        token = tile_at(db, rater, position).token
        record_vote(db, rater, position, token, "real", None, shown_at=shown_at, answered_at=answered_at)


def test_dashboard_numbers_match_brute_force(tmp_path, make_pool, write_study) -> None:
    db = make_study(tmp_path, make_pool, write_study, repeats=2)
    add_raters(db, "pilot", ["ann", "ben", "cat", "dan", "eve"])
    rng = random.Random(3)
    total = 2 * 2 * 3 + 2  # classes x sources x images per cell, plus the repeats
    planted: dict[str, list[tuple[float, float]]] = {}
    # ann: active now; ben: last vote 20 min ago (idle); cat: done long ago; dan: never started;
    # eve: quiet for an hour but disabled (not idle)
    for name, count, last in (("ann", 9, NOW - 30), ("ben", 5, NOW - 1200), ("cat", total, NOW - 5 * HOUR)):
        answered = sorted(last - rng.uniform(0, 2 * HOUR) for _ in range(count - 1)) + [last]
        planted[name] = [(at - rng.uniform(0.5, 40), at) for at in answered]
    planted["eve"] = [(NOW - 3700 - 3, NOW - 3700), (NOW - 3650 - 8, NOW - 3650)]
    for name, times in planted.items():
        plant_votes(db, name, times)
    set_disabled(db, "pilot", ["eve"], True, actor="admin")

    with connect(db) as conn:
        study_id = find_study(conn, "pilot").id
    board = dashboard(db, study_id, now=NOW)

    rows = {row.name: row for row in board.raters}
    assert list(rows) == ["ann", "ben", "cat", "dan", "eve"]
    for name in rows:
        times = planted.get(name, [])
        answered = [a for _, a in times]
        row = rows[name]
        assert (row.answered, row.total) == (len(times), total)
        assert row.votes_last_hour == sum(1 for a in answered if NOW - 3600 < a <= NOW)
        if len(times) >= 2 and max(answered) - min(answered) >= 3600:
            expected_rate = (len(times) - 1) / (max(answered) - min(answered)) * 3600
            assert abs(row.votes_per_hour - expected_rate) < 1e-9
        else:  # fewer than two votes, or less than an hour between the first and the last
            assert row.votes_per_hour is None
        if times:
            assert abs(row.median_seconds - statistics.median(a - s for s, a in times)) < 1e-9
        else:
            assert row.median_seconds is None and row.last_vote_at is None
    assert [name for name, row in rows.items() if row.idle] == ["ben"]
    assert board.idle == [("ben", 1200.0)]
    assert rows["eve"].votes_per_hour is None  # two votes 50 s apart are no pace per hour
    assert [name for name, row in rows.items() if row.done] == ["cat"]
    assert [name for name, row in rows.items() if row.disabled] == ["eve"]
    # idle after a stated time: with 40 minutes, ben (20 minutes quiet) is not idle
    assert not any(row.idle for row in dashboard(db, study_id, now=NOW, idle_seconds=2400).raters)

    every = [t for times in planted.values() for t in times]
    assert board.votes_last_hour == sum(1 for _, a in every if NOW - 3600 < a <= NOW)
    assert abs(board.median_seconds - statistics.median(a - s for s, a in every)) < 1e-9
    span = max(a for _, a in every) - min(a for _, a in every)
    assert abs(board.votes_per_hour - (len(every) - 1) / span * 3600) < 1e-9
    assert (board.answered, board.total) == (len(every), 5 * total)

    facts = board.study
    assert (facts.name, facts.n_classes, facts.n_sources, facts.n_items) == ("pilot", 2, 2, 12)
    assert (facts.repeats, facts.images_per_cell, facts.block_by_class) == (2, 3, True)


def test_the_page_names_idle_raters_and_waits_an_hour_for_a_pace(tmp_path, make_pool, write_study) -> None:
    db = make_study(tmp_path, make_pool, write_study)
    add_raters(db, "pilot", ["ann", "ben", "cat"])
    plant_votes(db, "ann", [(NOW - 4 + i - 0.5, NOW - 4 + i) for i in range(4)])  # 4 votes in 3 s
    ben = [(NOW - 7260, NOW - 7250), (NOW - 5460, NOW - 5450), (NOW - 3660, NOW - 3650)]
    plant_votes(db, "ben", [*ben, (NOW - 1210, NOW - 1200)])  # 3 gaps over 6050 s, then 20 min quiet
    with connect(db) as conn:
        study = find_study(conn, "pilot").id

    page = dashboard_html(dashboard(db, study, now=NOW))
    summary = page.split("</p>")[0]
    assert "Idle (no vote for 15 min): ben (20 min)." in summary and "ann" not in summary
    rows = {row.split('"')[0]: row for row in page.split('data-rater="')[1:]}
    assert "<td>after 1 h</td>" in rows["ann"] and "/h</td>" not in rows["ann"]
    assert f"<td>{3 / 6050 * 3600:.0f}/h</td>" in rows["ben"]
    assert "<td>-</td><td>-</td>" in rows["cat"]  # no votes: no pace, no median

    # a second after a vote nobody is idle, and the page says so rather than naming a limit alone
    with connect(db) as conn:
        ben_id = rater_id(conn, study, "ben")
    record_vote(
        db, ben_id, 5, tile_at(db, ben_id, 5).token, "real", None, shown_at=NOW - 3, answered_at=NOW - 1
    )
    page = dashboard_html(dashboard(db, study, now=NOW))
    assert "No rater idle (no vote for 15 min)." in page.split("</p>")[0]


def test_a_changed_vote_counts_once_with_its_new_times(tmp_path, make_pool, write_study) -> None:
    db = make_study(tmp_path, make_pool, write_study)
    add_raters(db, "pilot", ["ann"])
    plant_votes(db, "ann", [(NOW - 100, NOW - 90), (NOW - 80, NOW - 70)])
    with connect(db) as conn:
        study = find_study(conn, "pilot").id
        ann = rater_id(conn, study, "ann")
    token = tile_at(db, ann, 1).token
    record_vote(db, ann, 1, token, "synthetic", None, shown_at=NOW - 60, answered_at=NOW - 59)
    row = dashboard(db, study, now=NOW).raters[0]
    assert row.answered == 2 and row.votes_last_hour == 2
    assert row.median_seconds == statistics.median([1.0, 10.0]) and row.last_vote_at == NOW - 59


def test_audit_runs_in_the_background_and_keeps_its_result(
    tmp_path, make_pool, write_study, monkeypatch
) -> None:
    db = make_study(tmp_path, make_pool, write_study)
    add_raters(db, "pilot", ["ann"])
    release = threading.Event()
    runs = []
    real_audit = audit_job.audit_study

    def slow_audit(db_path, study):  # the real audit, held until the test lets it finish
        release.wait(60)
        runs.append(study)
        return real_audit(db_path, study)

    monkeypatch.setattr(audit_job, "audit_study", slow_audit)
    job = AuditJob(db, "pilot")
    first = job.state()  # the first look starts a run and does not wait for it
    assert first.running and first.report is None and first.finished_at is None
    assert not job.start()  # one run at a time
    release.set()
    finished = job.wait(60)
    assert finished.report is not None and finished.report.passed and not finished.running
    assert finished.finished_at is not None and finished.error is None
    assert job.state() == finished and runs == ["pilot"]  # cached: no new run per look
    assert job.start() and job.wait(60).finished_at >= finished.finished_at  # "Run audit again"
    assert runs == ["pilot", "pilot"]


def test_a_failed_audit_is_reported_not_lost(tmp_path, make_pool, write_study, monkeypatch) -> None:
    missing = AuditJob(tmp_path / "typo.db", "pilot")
    missing.start()
    assert "typo.db: study database does not exist" in missing.wait(60).error
    db = make_study(tmp_path, make_pool, write_study)

    def broken_audit(db_path, study):
        raise OSError("disk gone")

    monkeypatch.setattr(audit_job, "audit_study", broken_audit)
    job = AuditJob(db, "pilot")
    job.start()
    state = job.wait(60)
    assert state.report is None and not state.running and state.finished_at is not None
    assert state.error == "unexpected error (see the server log)"
