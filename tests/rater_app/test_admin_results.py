"""Interim results and the study's ZIP: the evaluator through its CLI, the admin only.

Unit tests run `rater_app.interim` and `rater_app.bundle` on a real SQLite study; the server
tests drive a real `histosynth rate` server (the admin in Chromium, a rater by Gradio event
index and by URL). Each evaluator subprocess costs seconds, so only five tests start one.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import sqlite3
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from histosynth import __version__
from histosynth.study_config import load_study_config
from rater_app import store
from rater_app.bundle import admin_record_csv, build_bundle, study_toml
from rater_app.create import create_study
from rater_app.interim import (
    VIEW_ACTION,
    EvaluationFailed,
    failure_line,
    interim_results,
    result_looks,
    vote_count,
)
from rater_app.raters import add_raters
from rater_app.voting import record_vote, tile_at

from ..conftest import histosynth
from .simulated_rater import SimulatedRater, simulated_rater

STUDY = "pilot"


@pytest.fixture
def study(tmp_path, make_pool, write_study) -> tuple[Path, dict[str, str], Path]:
    """Two classes x (real, two generators) x 2 tiles; three raters, the admin's secret, the TOML."""
    sources = {
        "real": make_pool("real", per_class=2),
        "KLF8-DM": make_pool("klf8", per_class=2),
        "styleGAN2": make_pool("sg2", per_class=2),
    }
    toml = write_study(sources, name=STUDY, instructions="Judge the *nuclei*.")
    db = tmp_path / "study.db"
    admin = create_study(toml, db).admin_secret
    secrets = {r.name: r.secret for r in add_raters(str(db), STUDY, ["ann", "ben", "cy"])}
    return db, {**secrets, "admin": admin}, toml


def cast_votes(db: Path, counts: dict[str, int]) -> None:
    """The first `count` tiles of each rater's order, voted at random (seeded)."""
    choice = random.Random(3)
    with store.connect(db) as conn:
        study_id = store.find_study(conn, STUDY).id
        raters = {name: store.rater_id(conn, study_id, name) for name in counts}
    for name, count in counts.items():
        for position in range(1, count + 1):
            tile = tile_at(str(db), raters[name], position)
            vote = choice.choice(["real", "synthetic"])
            record_vote(str(db), raters[name], position, tile.token, vote, None, time.time() - 3)


def study_id(db: Path) -> int:
    with store.connect(db) as conn:
        return store.find_study(conn, STUDY).id


def actions(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [row[0] for row in conn.execute("SELECT action FROM admin_actions ORDER BY id")]


def read_zip(content: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def check_manifest(files: dict[str, bytes]) -> dict:
    """The manifest lists every other file of the ZIP with its sha256 and size, checked here."""
    manifest = json.loads(files["manifest.json"])
    listed = {entry["path"]: entry for entry in manifest["files"]}
    assert set(listed) == set(files) - {"manifest.json"}
    for path, entry in listed.items():
        assert entry["sha256"] == hashlib.sha256(files[path]).hexdigest(), path
        assert entry["bytes"] == len(files[path])
    assert manifest["histosynth_version"] == __version__
    return manifest


def test_vote_count_and_failure_lines(study) -> None:
    db, _, _ = study
    cast_votes(db, {"ann": 12, "ben": 3})
    count = vote_count(db, study_id(db))
    assert (count.votes, count.raters, count.finished, count.total_raters) == (15, 2, 1, 3)
    folder = Path("/srv/tmp/histosynth-interim-abc")
    stderr = f"INFO something\nerror: {folder}/votes.csv: no votes\n"
    assert failure_line(stderr, 1, folder) == "votes.csv: no votes"
    crash = 'Traceback (most recent call last):\n  File "/usr/lib/x.py", line 1\nKeyError: 1\n'
    line = failure_line(crash, 1, folder)
    assert "exit code 1" in line and "/usr" not in line and "\n" not in line


def test_no_votes_no_evaluation_and_no_record(study) -> None:
    db, _, _ = study
    with pytest.raises(EvaluationFailed, match="no votes yet"):
        interim_results(db, study_id(db))
    assert actions(db) == []


def test_recreated_toml_reads_back_as_the_study(study, tmp_path) -> None:
    db, _, original = study
    with store.connect(db) as conn:
        record = store.find_study(conn, STUDY)
        n_items = len(store.study_items(conn, record.id))
    recreated = tmp_path / "recreated" / "study.toml"
    recreated.parent.mkdir()
    recreated.write_text(study_toml(record, n_items), encoding="utf-8")
    first, again = load_study_config(original), load_study_config(recreated)
    assert again.sources == {name: folder.resolve() for name, folder in first.sources.items()}
    assert again.settings() == first.settings() and again.seed == first.seed
    assert again.classes == ["ADI", "TUM"] and again.instructions == "Judge the *nuclei*."
    # multi-line Markdown, and a study from before images_per_cell was stored (from its items)
    older = replace(record, settings=replace(record.settings, images_per_cell=None, instructions="a\n\n*b*"))
    recreated.write_text(study_toml(older, n_items), encoding="utf-8")
    again = load_study_config(recreated)
    assert again.images_per_cell == 2 and again.instructions == "a\n\n*b*"


def test_admin_record_csv_lists_every_action(study) -> None:
    db, _, _ = study
    with store.connect(db) as conn, store.transaction(conn):
        store.record_admin_action(conn, study_id(db), "admin", VIEW_ACTION)
        store.record_admin_action(conn, study_id(db), "cli:root", "rater.disable", "ben")
        listed = store.admin_actions(conn, study_id(db))
    lines = admin_record_csv(listed).splitlines()
    assert lines[0] == "at,actor,action,target" and len(lines) == 3
    assert lines[1].endswith("+00:00,admin,results.view,") and lines[2].endswith(
        ",cli:root,rater.disable,ben"
    )


def test_interim_results_come_from_the_evaluator_and_are_recorded(study) -> None:
    db, _, _ = study
    cast_votes(db, {"ann": 12, "ben": 12, "cy": 5})
    results = interim_results(db, study_id(db))
    assert results.n_votes == 29
    assert {"KLF8-DM", "styleGAN2"} <= set(results.expert_scores["source"])
    assert {"score_mean", "score_std"} <= set(results.expert_scores.columns)
    assert {"ALL", "MEAN"} <= set(results.fleiss_kappa["class"])
    assert results.figure_png is not None and results.figure_png.startswith(b"\x89PNG")
    assert [look.action for look in results.looks] == [VIEW_ACTION]
    assert result_looks(db, study_id(db)) == results.looks


def test_bundle_holds_everything_and_leaves_nothing(study, tmp_path, monkeypatch) -> None:
    db, _, _ = study
    cast_votes(db, {"ann": 12, "ben": 4})
    temp = tmp_path / "server-tmp"
    temp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(temp))
    files = read_zip(build_bundle(db, STUDY))
    assert list(temp.iterdir()) == []  # built in a temporary folder, removed afterwards
    manifest = check_manifest(files)
    assert manifest["votes"] == 16 and manifest["evaluation"]["error"] is None
    exported = histosynth(
        "study", "export", "--db", str(db), "--study", STUDY, "--out", str(tmp_path / "v.csv")
    )
    assert exported.returncode == 0, exported.stderr
    assert files["votes.csv"] == (tmp_path / "v.csv").read_bytes()
    assert {
        "evaluated/expert_scores.csv",
        "evaluated/fleiss_kappa.csv",
        "evaluated/expert_scores.png",
    } <= set(files)
    assert b'name = "pilot"' in files["study.toml"]
    assert files["admin_actions.csv"].decode().splitlines()[-1].endswith(",admin,bundle.download,")


def test_bundle_without_votes_says_why_evaluated_is_missing(study) -> None:
    db, _, _ = study
    files = read_zip(build_bundle(db, STUDY))
    manifest = check_manifest(files)
    assert manifest["evaluation"]["error"] == "votes.csv: no votes"  # the evaluator's line, no temp path
    assert not any(name.startswith("evaluated/") for name in files)
    assert {"votes.csv", "study.toml", "admin_actions.csv"} <= set(files)


def test_zip_for_the_admin_404_for_raters(study, rating_server) -> None:
    db, logins, _ = study
    cast_votes(db, {"ann": 12})
    server = rating_server(db)
    ann = simulated_rater(server.url, "ben", logins["ben"])
    assert ann.client.get("/admin/study.zip").status_code == 404
    # the interim events, called by index: refused, nothing evaluated or recorded
    config = ann.client.get("/config").json()
    elements = {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}
    for target in ("interim-open", "interim-confirm"):
        event = next(d for d in config["dependencies"] if elements.get(d["targets"][0][0]) == target)
        body = {"data": [], "fn_index": event["id"], "session_hash": ann.session_hash, "event_data": None}
        response = ann.client.post("/gradio_api/run/predict", json=body)
        assert "only the study's admin" in response.text.lower()
        assert "KLF8" not in response.text and "votes" not in response.text
    assert actions(db) == []
    admin = SimulatedRater(server.url, "admin", logins["admin"])
    admin.login()
    response = admin.client.get("/admin/study.zip")
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    assert 'filename="pilot-study.zip"' in response.headers["content-disposition"]
    files = read_zip(response.content)
    check_manifest(files)
    assert files["votes.csv"] == admin.client.get("/admin/votes.csv").content
    assert actions(db) == ["bundle.download"]
    # the ZIP holds the votes with their sources and the results: the next warning counts it
    assert [look.action for look in result_looks(db, study_id(db))] == ["bundle.download"]


@pytest.mark.browser
def test_admin_confirms_and_sees_interim_results(study, rating_server, browser) -> None:
    db, logins, _ = study
    cast_votes(db, {"ann": 12, "ben": 7})
    base = rating_server(db).url
    page = browser.new_page(viewport={"width": 1024, "height": 768})
    page.goto(f"{base}/login?name=admin")
    page.fill("#secret", logins["admin"])
    page.click("#login")
    page.click("#interim-open", timeout=30_000)
    warning = page.wait_for_selector("#interim-warning :text('peeking')", timeout=30_000)
    text = page.inner_text("#interim-warning")
    assert "bias" in text and "19 votes" in text and "not been looked at before" in text
    assert warning is not None and actions(db) == []  # nothing recorded before the confirmation
    page.click("#interim-confirm")
    page.wait_for_selector("#interim-figure", timeout=60_000)
    assert page.eval_on_selector("#interim-figure", "img => img.complete && img.naturalWidth > 0")
    # inline, not a file in Gradio's cache that another session could fetch by URL
    assert page.get_attribute("#interim-figure", "src").startswith("data:image/png;base64,")
    kappa = page.inner_text("#interim-kappa")
    assert "kappa" in kappa and "MEAN" in kappa and "styleGAN2" in page.inner_text("#interim-scores")
    assert "looked at 1 time" in page.inner_text("#interim-message")
    page.screenshot(path=str(db.parent / "interim.png"), full_page=True)
    assert actions(db) == [VIEW_ACTION]
    page.click("#interim-open")  # the next warning names the earlier look
    page.wait_for_selector("#interim-warning :text('looked at 1 time')", timeout=30_000)
    page.click("#interim-cancel")
    page.wait_for_selector("#interim-confirmation", state="hidden", timeout=30_000)
    assert actions(db) == [VIEW_ACTION]
    assert page.get_attribute("#study-zip", "href") == "admin/study.zip"  # served: the test above
