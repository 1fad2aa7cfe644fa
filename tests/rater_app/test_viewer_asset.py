"""The viewer's script as a static asset: served under a content-hashed name, cached for good,
loaded by the page's head rather than written into it, and valid JavaScript.

The app runs in this process (Starlette's TestClient), so these tests need no browser and no
server process; the browser tests (test_rater_viewer.py) check that the script still does its work.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from fastapi.testclient import TestClient

from rater_app.create import create_study
from rater_app.raters import add_raters
from rater_app.server import ASSET_PREFIX, build_app
from rater_app.viewer import MAX_ZOOM, SCRIPT_FILE, ZOOM_STEPS, head_html, script_name

SCRIPT_URL = re.compile(r"rater-assets/(viewer\.[0-9a-f]{12}\.js)")


@pytest.fixture
def app_client(tmp_path, make_pool, write_study) -> TestClient:
    """A logged-in client of one study's app."""
    sources = {"real": make_pool("real", per_class=1), "gen": make_pool("gen", per_class=1)}
    db = tmp_path / "study.db"
    create_study(write_study(sources, images_per_cell=1), db)
    secret = add_raters(str(db), "pilot", ["ann"])[0].secret
    client = TestClient(build_app(db), base_url="http://127.0.0.1")
    login = client.post("/login", data={"name": "ann", "secret": secret}, follow_redirects=False)
    assert login.status_code == 303
    return client


def test_the_name_follows_the_content() -> None:
    content = SCRIPT_FILE.read_bytes()
    name = script_name(content)
    assert re.fullmatch(r"viewer\.[0-9a-f]{12}\.js", name)
    assert script_name(content) == name  # the same bytes, the same name: browsers keep it
    assert script_name(content + b"\n") != name  # any change, a new URL: browsers fetch it again


def test_the_head_loads_the_script_with_the_python_numbers() -> None:
    src = "rater-assets/viewer.0123456789ab.js"
    head = head_html(src)
    assert head.startswith(f'<script src="{src}" ') and head.endswith("></script>")
    assert f'data-max-zoom="{MAX_ZOOM}"' in head and 'data-zoom-steps="1 1.5 2 3 4"' in head
    assert " defer" in head and ZOOM_STEPS[-1] == MAX_ZOOM
    source = SCRIPT_FILE.read_text(encoding="utf-8")
    assert "config.maxZoom" in source and "config.zoomSteps" in source  # read from the tag, not copied


def test_the_page_references_the_hashed_script_and_has_no_inline_viewer(app_client) -> None:
    page = app_client.get("/", headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert SCRIPT_URL.findall(page.text) == [script_name(SCRIPT_FILE.read_bytes())]
    source = SCRIPT_FILE.read_text(encoding="utf-8")
    functions = re.findall(r"function \w+\(", source)
    assert len(functions) >= 8
    for code in [*functions, "histosynth-pixel-zoom"]:  # none of the viewer's code is in the page
        assert code not in page.text, code
    head = app_client.get("/config").json()["head"]
    assert head == head_html(f"rater-assets/{script_name(SCRIPT_FILE.read_bytes())}")


def test_the_script_is_served_immutable_as_javascript(app_client) -> None:
    content = SCRIPT_FILE.read_bytes()
    response = app_client.get(f"{ASSET_PREFIX}{script_name(content)}")
    assert response.status_code == 200 and response.content == content
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert response.headers["cache-control"] == "private, max-age=31536000, immutable"
    assert response.headers["x-content-type-options"] == "nosniff"  # WebGuard's headers still come


def test_only_the_one_script_answers_under_the_prefix(app_client) -> None:
    name = script_name(SCRIPT_FILE.read_bytes())
    others = [
        "viewer.000000000000.js",  # a stale or guessed hash
        name.upper(),
        name + "x",
        "viewer.js",
        "static/viewer.js",
        f"x/{name}",
        "server.py",
        "%2e%2e/server.py",
        "..%2fserver.py",
        "%2e%2e%2f%2e%2e%2fpyproject.toml",
        "",
    ]
    for other in others:
        response = app_client.get(ASSET_PREFIX + other)
        assert (response.status_code, response.content) == (404, b"not found"), other
    anonymous = TestClient(app_client.app, base_url="http://127.0.0.1")
    assert anonymous.get(ASSET_PREFIX + name).status_code == 401  # behind the login like every route


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed (apt-get install nodejs)")
def test_the_script_is_valid_javascript() -> None:
    command = ["node", "--check", str(SCRIPT_FILE)]
    checked = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
