"""Managing raters without a browser: disable, enable, reset, the admin record and the CLI."""

from __future__ import annotations

import csv
import getpass
import io
import time
from pathlib import Path

import pytest

from histosynth.cli.study import cli_actor
from histosynth.errors import StudyError
from rater_app import store
from rater_app.auth import AccountDisabled, identity_for, login
from rater_app.create import create_study
from rater_app.export import export_votes
from rater_app.raters import add_raters, admin_record, reset_secrets, set_disabled, study_status
from rater_app.server import SESSION_CACHE_TTL, SessionCache
from rater_app.store import connect, find_study, rater_id
from rater_app.voting import record_vote, tile_at

from ..conftest import histosynth
from .simulated_rater import RatingClientError, simulated_rater


@pytest.fixture
def study(tmp_path, make_pool, write_study) -> str:
    sources = {"real": make_pool("real", per_class=2), "KLF8-DM": make_pool("klf8", per_class=2)}
    db = tmp_path / "study.db"
    create_study(write_study(sources), db)
    return str(db)


def test_disabled_rater_cannot_log_in_and_keeps_votes(study) -> None:
    secrets = {r.name: r.secret for r in add_raters(study, "pilot", ["ann", "ben"], actor="admin")}
    token = login(study, "pilot", "ann", secrets["ann"])
    with connect(study) as db:
        ann = rater_id(db, find_study(db, "pilot").id, "ann")
    record_vote(study, ann, 1, tile_at(study, ann, 1).token, "real", None, shown_at=1.0, answered_at=2.0)
    assert identity_for(study, token).name == "ann"

    set_disabled(study, "pilot", ["ann"], True, actor="admin")
    assert identity_for(study, token) is None  # the open session ended
    with pytest.raises(AccountDisabled):
        login(study, "pilot", "ann", secrets["ann"])
    assert login(study, "pilot", "ann", "wrong") is None  # a wrong secret learns nothing new
    assert login(study, "pilot", "ben", secrets["ben"]) is not None
    assert [(p.rater, p.answered, p.disabled) for p in study_status(study, "pilot")] == [
        ("ann", 1, True),
        ("ben", 0, False),
    ]
    rows = list(csv.DictReader(io.StringIO(export_votes(study, "pilot"))))
    assert [(r["rater"], r["vote"]) for r in rows] == [("ann", "real")]  # votes stay and export

    set_disabled(study, "pilot", ["ann"], False, actor="admin")
    set_disabled(study, "pilot", ["ann"], False, actor="admin")  # no change: not recorded again
    assert identity_for(study, login(study, "pilot", "ann", secrets["ann"])).name == "ann"
    assert [(a.actor, a.action, a.target) for a in admin_record(study, "pilot")] == [
        ("admin", "rater.add", "ann"),
        ("admin", "rater.add", "ben"),
        ("admin", "rater.disable", "ann"),
        ("admin", "rater.enable", "ann"),
    ]


def test_unknown_names_change_nothing(study) -> None:
    add_raters(study, "pilot", ["ann"])  # no actor: nothing recorded (the demo's setup)
    with pytest.raises(StudyError, match="no rater named 'zed'"):
        set_disabled(study, "pilot", ["ann", "zed"], True, actor="admin")
    with pytest.raises(StudyError, match="no rater named 'zed'"):
        reset_secrets(study, "pilot", ["ann", "zed"], actor="admin")
    with pytest.raises(StudyError, match="no rater names"):
        set_disabled(study, "pilot", [], True, actor="admin")
    assert not study_status(study, "pilot")[0].disabled and admin_record(study, "pilot") == []


def test_reset_ends_sessions_and_is_recorded(study) -> None:
    old = add_raters(study, "pilot", ["ann"])[0].secret
    token = login(study, "pilot", "ann", old)
    new = reset_secrets(study, "pilot", ["ann"], actor="cli:someone")[0].secret
    assert identity_for(study, token) is None and login(study, "pilot", "ann", old) is None
    assert login(study, "pilot", "ann", new) is not None
    assert [(a.actor, a.action) for a in admin_record(study, "pilot")] == [("cli:someone", "rater.reset")]


def test_session_cache_forgets_a_rater() -> None:
    from rater_app.auth import Identity

    calls = []

    def resolve(token: str) -> Identity:
        calls.append(token)
        return Identity(study_id=1, name=token, rater_id=len(token))

    cache = SessionCache(resolve, ttl=3600)
    cache.get("aa"), cache.get("bbb"), cache.get("aa")
    assert calls == ["aa", "bbb"]
    cache.forget_rater(2)  # the rater of "aa"
    cache.get("aa"), cache.get("bbb")
    assert calls == ["aa", "bbb", "aa"]


def test_cli_disable_enable_reset_actions(study) -> None:
    common = ("--db", study, "--study", "pilot")
    added = histosynth("study", "raters", "add", "ann", "ben", *common)
    assert added.returncode == 0, added.stderr
    old = dict(line.split("\t")[:2] for line in added.stdout.splitlines())
    disabled = histosynth("study", "raters", "disable", "ann", *common)
    assert disabled.returncode == 0 and disabled.stdout == "", disabled.stderr
    status = histosynth("study", "status", *common)
    assert status.stdout.splitlines() == ["ann\t0/8\tdisabled", "ben\t0/8"]
    with pytest.raises(AccountDisabled):
        login(study, "pilot", "ann", old["ann"])
    assert histosynth("study", "raters", "enable", "ann", *common).returncode == 0
    reset = histosynth("study", "raters", "reset", "ben", *common, "--url", "https://rate.example")
    name, secret, link = reset.stdout.strip().split("\t")
    assert name == "ben" and link == "https://rate.example/login?name=ben" and secret != old["ben"]
    assert login(study, "pilot", "ben", secret) is not None and login(study, "pilot", "ann", old["ann"])
    missing = histosynth("study", "raters", "disable", "zed", *common)
    assert missing.returncode == 1 and "no rater named 'zed'" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    actions = histosynth("study", "raters", "actions", *common)
    actor = f"cli:{getpass.getuser()}"
    lines = [line.split("\t") for line in actions.stdout.splitlines()]
    assert [fields[1:] for fields in lines] == [
        [actor, "rater.add", "ann"],
        [actor, "rater.add", "ben"],
        [actor, "rater.disable", "ann"],
        [actor, "rater.enable", "ann"],
        [actor, "rater.reset", "ben"],
    ]
    assert all(fields[0].endswith("Z") and len(fields[0]) == 20 for fields in lines)


def test_a_rater_disabled_from_the_cli_is_refused_within_the_cache_ttl(study, rating_server) -> None:
    """The server caches sessions for `SESSION_CACHE_TTL` (5 s); a disable from another process
    deletes the sessions, so within that ttl the rater's next tile or vote answers 401."""
    ann_secret = add_raters(study, "pilot", ["ann"])[0].secret
    server = rating_server(Path(study))
    ann = simulated_rater(server.url, "ann", ann_secret)
    token = ann.view.token
    assert ann.client.get(f"/tiles/{token}.png").status_code == 200
    set_disabled(study, "pilot", ["ann"], True, actor=cli_actor())
    deadline = time.monotonic() + SESSION_CACHE_TTL + 2.0  # ttl, and a margin for a slow CI
    while ann.client.get(f"/tiles/{token}.png").status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ann.client.get(f"/tiles/{token}.png").status_code == 401
    with pytest.raises(RatingClientError, match="HTTP 401"):
        ann.vote("real")
    with connect(study) as db:
        assert store.vote_rows(db, find_study(db, "pilot").id) == []
