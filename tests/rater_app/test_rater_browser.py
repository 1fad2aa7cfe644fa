"""What a rater sees and does, in a real headless Chromium against a real server.

The rater logs in, rates with the keyboard, reloads half-way, resumes at the right tile and
finishes; the database must then hold exactly the votes that were pressed.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from rater_app.create import create_study
from rater_app.raters import add_raters

from ..conftest import histosynth
from .conftest import wait_for_tile

pytestmark = pytest.mark.browser

KEYS = ["r", "s", "1", "2", "r", "r", "s", "2"]
VOTE_OF_KEY = {"r": "real", "1": "real", "s": "synthetic", "2": "synthetic"}


@pytest.fixture
def study_db(tmp_path, make_pool, write_study):
    def make(**fields) -> tuple[Path, dict[str, str]]:
        sources = {
            "real": make_pool("real", per_class=2),
            "KLF8-DM": make_pool("klf8", per_class=2),
        }
        db = tmp_path / "study.db"
        admin = create_study(write_study(sources, images_per_cell=2, **fields), db).admin_secret
        secrets = {r.name: r.secret for r in add_raters(str(db), "pilot", ["ann", "ben"])}
        return db, {**secrets, "admin": admin}

    return make


def log_in(page, base: str, name: str, secret: str) -> None:
    page.goto(f"{base}/login?name={name}")
    page.fill("#secret", secret)
    page.click("#login")


def wait_for_position(page, position: int) -> None:
    wait_for_tile(page, position)


def stored_votes(db: Path, rater: str) -> list[tuple[int, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT v.position, v.vote FROM votes v JOIN raters r ON r.id = v.rater_id"
            " WHERE r.name = ? ORDER BY v.position",
            [rater],
        ).fetchall()


def test_rate_with_keyboard_reload_and_resume(study_db, rating_server, browser) -> None:
    db, secrets = study_db()
    base = rating_server(db).url
    page = browser.new_page()
    page.goto(base + "/")
    assert page.url.endswith("/login")  # every page needs a login
    log_in(page, base, "ann", secrets["ann"])
    wait_for_position(page, 1)
    assert "1 of 8" in page.inner_text("#progress")
    size = page.eval_on_selector("#tile-img", "img => [img.naturalWidth, img.getBoundingClientRect().width]")
    assert size[0] == 256 and size[1] >= 512  # native 256 px shown at least 2x
    for position, key in enumerate(KEYS[:4], start=1):
        page.keyboard.press(key)
        wait_for_position(page, position + 1)
    page.reload()
    wait_for_position(page, 5)  # resumes at the first unanswered tile
    assert "5 of 8" in page.inner_text("#progress")
    for position, key in enumerate(KEYS[4:], start=5):
        page.keyboard.press(key)
        if position < len(KEYS):
            wait_for_position(page, position + 1)
    page.wait_for_selector("text=All 8 tiles rated", timeout=30_000)
    assert stored_votes(db, "ann") == [(i, VOTE_OF_KEY[k]) for i, k in enumerate(KEYS, start=1)]
    assert stored_votes(db, "ben") == []


def test_back_changes_a_vote_and_keeps_history(study_db, rating_server, browser) -> None:
    db, secrets = study_db()
    base = rating_server(db).url
    page = browser.new_page()
    log_in(page, base, "ben", secrets["ben"])
    wait_for_position(page, 1)
    page.keyboard.press("r")
    wait_for_position(page, 2)
    page.keyboard.press("s")
    wait_for_position(page, 3)
    page.keyboard.press("b")
    wait_for_position(page, 2)
    assert "your answer: synthetic" in page.inner_text("#progress")
    page.keyboard.press("r")  # change the answer; back to the first unanswered tile
    wait_for_position(page, 3)
    assert stored_votes(db, "ben") == [(1, "real"), (2, "real")]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT position, vote FROM vote_history").fetchall() == [(2, "synthetic")]
    # a second browser (new login) resumes at the same place
    other = browser.new_context().new_page()
    log_in(other, base, "ben", secrets["ben"])
    wait_for_position(other, 3)


def test_confidence_is_required_and_stored(study_db, rating_server, browser) -> None:
    db, secrets = study_db(confidence="6-point")
    base = rating_server(db).url
    page = browser.new_page()
    log_in(page, base, "ann", secrets["ann"])
    wait_for_position(page, 1)
    page.keyboard.press("r")
    page.wait_for_selector("text=choose a confidence", timeout=30_000)
    assert stored_votes(db, "ann") == []
    page.get_by_label("6 - certain").check()
    page.keyboard.press("r")
    wait_for_position(page, 2)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT vote, confidence FROM votes").fetchall() == [("real", 6)]


def test_wrong_secret_and_admin_view(study_db, rating_server, browser) -> None:
    db, secrets = study_db()
    base = rating_server(db).url
    page = browser.new_page()
    log_in(page, base, "ann", "not-the-secret")
    page.wait_for_selector("text=Name or secret not recognised")
    log_in(page, base, "ann", secrets["ann"])
    wait_for_position(page, 1)
    page.keyboard.press("s")
    wait_for_position(page, 2)
    assert page.request.get(f"{base}/admin/votes.csv").status == 404  # raters cannot export
    admin = browser.new_context().new_page()
    log_in(admin, base, "admin", secrets["admin"])
    admin.wait_for_function(
        "() => (document.querySelector('#rater-table') || {innerText: ''}).innerText.includes('ben')",
        timeout=30_000,
    )
    admin.screenshot(path=str(db.parent / "admin.png"), full_page=True)
    table = admin.inner_text("#rater-table")
    assert "ann" in table and "ben" in table
    csv_text = admin.request.get(f"{base}/admin/votes.csv").text()
    assert csv_text.splitlines()[0].startswith("rater,item,class,source,vote")
    assert len(csv_text.splitlines()) == 2 and ",synthetic," in csv_text


def test_demo_prepares_and_serves(tmp_path, rating_server, browser) -> None:
    result = histosynth("demo", "--dir", str(tmp_path / "demo"), "--no-launch")
    assert result.returncode == 0, result.stderr
    logins = dict(line.split("\t")[:2] for line in result.stdout.splitlines() if "\t" in line)
    assert {"rater1", "rater2", "rater3", "admin"} <= set(logins)
    base = rating_server(tmp_path / "demo" / "demo.db").url
    page = browser.new_page()
    log_in(page, base, "rater2", logins["rater2"])
    wait_for_position(page, 1)
    assert "1 of 84" in page.inner_text("#progress")  # 9 classes x 3 sources x 3 + 3 repeats


def test_double_click_records_one_vote(study_db, rating_server, browser) -> None:
    db, secrets = study_db()
    base = rating_server(db).url
    page = browser.new_page()
    log_in(page, base, "ann", secrets["ann"])
    wait_for_position(page, 1)
    page.dblclick("#vote-synthetic")
    wait_for_position(page, 2)
    page.wait_for_timeout(500)  # let a second click, if one went out, arrive
    assert stored_votes(db, "ann") == [(1, "synthetic")]
    assert page.get_attribute("#tile-img", "data-position") == "2"
