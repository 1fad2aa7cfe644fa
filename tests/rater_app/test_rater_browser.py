"""What a rater sees and does, in a real headless Chromium against a real server.

The rater logs in, rates with the keyboard, reloads half-way, resumes at the right tile and
finishes; the database must then hold exactly the votes that were pressed.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest

from rater_app.create import create_study

from ..conftest import build_pool, histosynth
from .conftest import fresh_raters, log_in, study_toml, wait_for_tile

pytestmark = pytest.mark.browser

KEYS = ["r", "s", "1", "2", "r", "r", "s", "2"]
VOTE_OF_KEY = {"r": "real", "1": "real", "s": "synthetic", "2": "synthetic"}


def make_study(folder: Path, **fields) -> tuple[Path, str]:
    """A two-source study `pilot` of 8 tiles per rater in `folder`: the database and the admin secret."""
    sources = {
        source: build_pool(folder / "pools" / pool, per_class=2)
        for source, pool in {"real": "real", "KLF8-DM": "klf8"}.items()
    }
    db = folder / "study.db"
    admin = create_study(study_toml(folder, sources, images_per_cell=2, **fields), db).admin_secret
    return db, admin


@dataclass(frozen=True)
class Served:
    """The shared study's database and URL, and two raters of the test's own."""

    db: Path
    url: str
    admin: str
    ann: str
    ben: str
    secrets: dict[str, str]


@pytest.fixture(scope="module")
def plain_study(tmp_path_factory, module_rating_server) -> tuple[Path, str, str]:
    """One served study for the tests that need no settings of their own: a start costs seconds."""
    db, admin = make_study(tmp_path_factory.mktemp("plain"))
    return db, module_rating_server(db).url, admin


@pytest.fixture
def served(plain_study) -> Served:
    db, url, admin = plain_study
    secrets = fresh_raters(db, "ann", "ben")
    ann, ben = secrets
    return Served(db, url, admin, ann, ben, secrets)


def wait_for_position(page, position: int) -> None:
    wait_for_tile(page, position)


def stored_votes(db: Path, rater: str) -> list[tuple[int, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT v.position, v.vote FROM votes v JOIN raters r ON r.id = v.rater_id"
            " WHERE r.name = ? ORDER BY v.position",
            [rater],
        ).fetchall()


def test_rate_with_keyboard_reload_and_resume(served, browser) -> None:
    db, base, ann, ben = served.db, served.url, served.ann, served.ben
    page = browser.new_page()
    page.goto(base + "/")
    assert page.url.endswith("/login")  # every page needs a login
    log_in(page, base, ann, served.secrets[ann])
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
    assert stored_votes(db, ann) == [(i, VOTE_OF_KEY[k]) for i, k in enumerate(KEYS, start=1)]
    assert stored_votes(db, ben) == []


def test_back_changes_a_vote_and_keeps_history(served, browser) -> None:
    db, base, ben = served.db, served.url, served.ben
    page = browser.new_page()
    log_in(page, base, ben, served.secrets[ben])
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
    assert stored_votes(db, ben) == [(1, "real"), (2, "real")]
    with sqlite3.connect(db) as conn:
        own = "JOIN raters r ON r.id = h.rater_id WHERE r.name = ?"
        history = conn.execute(f"SELECT h.position, h.vote FROM vote_history h {own}", [ben]).fetchall()
    assert history == [(2, "synthetic")]
    # a second browser (new login) resumes at the same place
    other = browser.new_context().new_page()
    log_in(other, base, ben, served.secrets[ben])
    wait_for_position(other, 3)


def test_confidence_is_required_and_stored(tmp_path, rating_server, browser) -> None:
    db, _ = make_study(tmp_path, confidence="6-point")
    [(ann, secret)] = fresh_raters(db, "ann").items()
    base = rating_server(db).url
    page = browser.new_page()
    log_in(page, base, ann, secret)
    wait_for_position(page, 1)
    page.keyboard.press("r")
    page.wait_for_selector("text=choose a confidence", timeout=30_000)
    assert stored_votes(db, ann) == []
    page.get_by_label("6 - certain").check()
    page.keyboard.press("r")
    wait_for_position(page, 2)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT vote, confidence FROM votes").fetchall() == [("real", 6)]


def test_wrong_secret_and_admin_view(served, browser) -> None:
    base, ann, ben = served.url, served.ann, served.ben
    page = browser.new_page()
    log_in(page, base, ann, "not-the-secret")
    page.wait_for_selector("text=Name or secret not recognised")
    log_in(page, base, ann, served.secrets[ann])
    wait_for_position(page, 1)
    page.keyboard.press("s")
    wait_for_position(page, 2)
    assert page.request.get(f"{base}/admin/votes.csv").status == 404  # raters cannot export
    admin = browser.new_context().new_page()
    log_in(admin, base, "admin", served.admin)
    admin.wait_for_function(
        "name => (document.querySelector('#rater-table') || {innerText: ''}).innerText.includes(name)",
        arg=ben,
        timeout=30_000,
    )
    table = admin.inner_text("#rater-table")
    assert ann in table and ben in table
    header, *rows = admin.request.get(f"{base}/admin/votes.csv").text().splitlines()
    assert header.startswith("rater,item,class,source,vote")
    own = [row for row in rows if row.startswith(f"{ann},")]
    assert len(own) == 1 and ",synthetic," in own[0]


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


def test_double_click_records_one_vote(served, browser) -> None:
    db, base, ann = served.db, served.url, served.ann
    page = browser.new_page()
    log_in(page, base, ann, served.secrets[ann])
    wait_for_position(page, 1)
    page.dblclick("#vote-synthetic")
    wait_for_position(page, 2)
    page.wait_for_timeout(500)  # let a second click, if one went out, arrive
    assert stored_votes(db, ann) == [(1, "synthetic")]
    assert page.get_attribute("#tile-img", "data-position") == "2"
