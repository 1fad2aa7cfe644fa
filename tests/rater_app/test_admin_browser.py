"""The admin's page in a real headless Chromium against a real server.

The dashboard must move by itself when another rater votes (no reload: a marker set in the
page survives), a rater the admin adds must be able to log in with the line shown once, and a
rater the admin disables must be stopped at their next request and kept out of the login.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from rater_app.create import create_study
from rater_app.raters import add_raters

from .conftest import log_in, wait_for_tile
from .simulated_rater import simulated_rater

pytestmark = pytest.mark.browser


@pytest.fixture
def study(tmp_path, make_pool, write_study) -> tuple[Path, dict[str, str]]:
    sources = {"real": make_pool("real", per_class=2), "KLF8-DM": make_pool("klf8", per_class=2)}
    db = tmp_path / "study.db"
    admin = create_study(write_study(sources, images_per_cell=2), db).admin_secret
    secrets = {r.name: r.secret for r in add_raters(str(db), "pilot", ["ann", "ben"])}
    return db, {**secrets, "admin": admin}


def row_text(page, name: str) -> str:
    return page.inner_text(f"#rater-table tr[data-rater='{name}']")


def choose_rater(page, name: str) -> None:
    page.click("#rater-choice input")
    page.get_by_role("option", name=name, exact=True).click()


def test_dashboard_updates_itself_and_admin_adds_a_rater(study, rating_server, browser) -> None:
    db, secrets = study
    base = rating_server(db).url
    admin = browser.new_page()
    log_in(admin, base, "admin", secrets["admin"])
    admin.wait_for_selector("#rater-table tr[data-rater='ann']", timeout=30_000)
    assert "0 / 8" in row_text(admin, "ann")
    assert "sources: 2" in admin.inner_text("#study-settings")
    admin.wait_for_selector("#audit-verdict", timeout=30_000)  # the background audit, shown when done
    assert "PASSED" in admin.inner_text("#audit-verdict")
    admin.evaluate("() => { window.__not_reloaded = true; }")

    ann = simulated_rater(base, "ann", secrets["ann"])
    ann.vote("real")
    ann.vote("synthetic")
    admin.wait_for_function(  # the 5 s timer, no click and no reload
        "() => document.querySelector(\"#rater-table tr[data-rater='ann']\").innerText.includes('2 / 8')",
        timeout=20_000,
    )
    assert admin.evaluate("() => window.__not_reloaded === true")

    admin.fill("#new-rater textarea, #new-rater input", "zoe")
    admin.click("#add-rater")
    admin.wait_for_selector("#login-line-text", timeout=20_000)
    name, secret, link = admin.inner_text("#login-line-text").strip().split("\t")
    assert name == "zoe" and link == f"{base}/login?name=zoe"
    admin.wait_for_selector("#rater-table tr[data-rater='zoe']", timeout=20_000)
    assert "admin rater.add zoe" in admin.inner_text("#admin-record")
    with sqlite3.connect(db) as conn:
        hashes = [row[0] for row in conn.execute("SELECT secret_hash FROM raters WHERE name = 'zoe'")]
    assert len(hashes) == 1 and secret not in hashes[0]  # only its hash is stored

    zoe = browser.new_context().new_page()
    zoe.goto(link)
    zoe.fill("#secret", secret)
    zoe.click("#login")
    wait_for_tile(zoe, 1)
    assert not zoe.is_visible("#dashboard")


def test_disabled_rater_is_stopped_and_cannot_log_in(study, rating_server, browser) -> None:
    db, secrets = study
    base = rating_server(db).url
    ann = browser.new_page()
    log_in(ann, base, "ann", secrets["ann"])
    wait_for_tile(ann, 1)
    ann.keyboard.press("r")
    wait_for_tile(ann, 2)

    admin = browser.new_context().new_page()
    log_in(admin, base, "admin", secrets["admin"])
    admin.wait_for_selector("#rater-table tr[data-rater='ann']", timeout=30_000)
    choose_rater(admin, "ann")
    admin.click("#disable-rater")
    admin.wait_for_selector("#rater-table tr[data-rater='ann'][data-state='disabled']", timeout=20_000)
    assert "admin rater.disable ann" in admin.inner_text("#admin-record")

    ann.keyboard.press("s")  # the next vote is refused at once (the page's disable forgot the session)
    ann.wait_for_timeout(1500)
    with sqlite3.connect(db) as conn:
        votes = conn.execute("SELECT position, vote FROM votes").fetchall()
    assert votes == [(1, "real")]  # the earlier vote stays
    ann.reload()
    assert ann.url.endswith("/login")
    log_in(ann, base, "ann", secrets["ann"])
    ann.wait_for_selector("text=This account is disabled", timeout=10_000)
    assert ann.url.split("?")[0].endswith("/login")

    choose_rater(admin, "ann")
    admin.click("#enable-rater")
    admin.wait_for_selector("#rater-table tr[data-rater='ann'][data-state='']", timeout=20_000)
    log_in(ann, base, "ann", secrets["ann"])
    wait_for_tile(ann, 2)  # back where they were
