"""The rating app under load and failure: many raters at once, a killed server, hostile requests.

Raters are `SimulatedRater`s that speak to a real server over loopback with the same routes
and Gradio events as the browser.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from rater_app.create import create_study
from rater_app.raters import add_raters
from rater_app.store import image_store_dir

from ..conftest import build_pool
from .conftest import study_toml
from .simulated_rater import RatingClientError, TileView, simulated_rater


def make_study(folder: Path, raters: int = 0) -> tuple[Path, dict[str, str]]:
    """A three-source study `pilot` in `folder` with `raters` raters `r00`, `r01`, ... (name -> secret)."""
    classes = ("ADI", "TUM")
    sources = {
        source: build_pool(folder / "pools" / pool, classes=classes, per_class=3)
        for source, pool in {"real": "real", "KLF8-DM": "klf8", "styleGAN2": "sg2"}.items()
    }
    db = folder / "study.db"
    create_study(study_toml(folder, sources, images_per_cell=3), db)
    return db, new_raters(db, "r", raters)


def new_raters(db: Path, prefix: str, count: int) -> dict[str, str]:
    """`count` raters `<prefix>00`, `<prefix>01`, ... added to study `pilot` (name -> secret)."""
    if not count:
        return {}
    logins = add_raters(str(db), "pilot", [f"{prefix}{i:02d}" for i in range(count)])
    return {login.name: login.secret for login in logins}


@dataclass(frozen=True)
class SharedStudy:
    """A study served for a whole module; each test adds raters of its own (`raters`), so that no
    test sees another's votes (the server reads raters from the database at each login)."""

    db: Path
    url: str

    def raters(self, prefix: str, count: int) -> dict[str, str]:
        return new_raters(self.db, prefix, count)


@pytest.fixture(scope="module")
def shared(tmp_path_factory, module_rating_server) -> SharedStudy:
    """The study and server of the tests that neither kill nor restart the server: a start costs
    seconds. A second study, `other`, lies in the same database for the isolation test."""
    folder = tmp_path_factory.mktemp("shared")
    db, _ = make_study(folder)
    other = {
        "real": build_pool(folder / "pools" / "other-real"),
        "gen": build_pool(folder / "pools" / "other-gen"),
    }
    create_study(study_toml(folder, other, name="other", file_name="other.toml"), db)
    return SharedStudy(db, module_rating_server(db, "pilot").url)


def _by_rater(pairs, names) -> dict[str, list]:
    """(name, value) pairs grouped by name, in order; only `names`' when given."""
    result: dict[str, list] = {}
    for name, value in pairs:
        if names is None or name in names:
            result.setdefault(name, []).append(value)
    return result


def votes_in_db(db: Path, names=None) -> dict[str, list[tuple[int, str, str]]]:
    """Each rater's stored votes (position, token, vote) in order; only `names`' when given."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            """SELECT r.name, v.position, a.token, v.vote FROM votes v JOIN raters r ON r.id = v.rater_id
               JOIN assignments a ON a.rater_id = v.rater_id AND a.position = v.position
               ORDER BY r.name, v.position"""
        ).fetchall()
    return _by_rater(((name, tuple(vote)) for name, *vote in rows), names)


def orders_in_db(db: Path, names=None) -> dict[str, list[str]]:
    """Each rater's tile tokens in their order; only `names`' when given."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            """SELECT r.name, a.token FROM assignments a JOIN raters r ON r.id = a.rater_id
               ORDER BY r.name, a.position"""
        ).fetchall()
    return _by_rater(rows, names)


def choice(name: str, position: int) -> str:
    return "real" if (sum(map(ord, name)) + position) % 3 else "synthetic"


def test_twenty_raters_at_once(shared) -> None:
    db, secrets = shared.db, shared.raters("crowd", 20)
    orders_before = orders_in_db(db, secrets)
    total = 2 * 3 * 3

    def rate_all(name: str) -> list[tuple[int, str, str]]:
        rater = simulated_rater(shared.url, name, secrets[name])
        sent = []
        try:
            while rater.view.position is not None:
                position, item = rater.view.position, rater.view.token
                vote = choice(name, position)
                rater.vote(vote)
                sent.append((position, item, vote))
        finally:
            rater.close()
        return sent

    with ThreadPoolExecutor(max_workers=20) as pool:
        sent = dict(zip(secrets, pool.map(rate_all, secrets), strict=True))
    stored = votes_in_db(db, secrets)
    assert stored == sent  # nothing lost, nothing duplicated, values intact
    assert all(len(votes) == total for votes in stored.values())
    assert orders_in_db(db, secrets) == orders_before
    for name, votes in stored.items():
        assert [item for _, item, _ in votes] == orders_before[name]


def test_votes_survive_sigkill(tmp_path, rating_server) -> None:
    db, secrets = make_study(tmp_path, raters=5)
    server = rating_server(db)
    acknowledged: dict[str, list[tuple[int, str, str]]] = {name: [] for name in secrets}
    raters = {name: simulated_rater(server.url, name, secret) for name, secret in secrets.items()}
    stop = threading.Event()

    def keep_voting(name: str) -> None:
        rater = raters[name]
        while not stop.is_set() and rater.view.position is not None:
            position, item = rater.view.position, rater.view.token
            vote = choice(name, position)
            try:
                rater.vote(vote)
            except (httpx.HTTPError, RatingClientError):
                return  # the server died mid-request: this vote was never acknowledged
            acknowledged[name].append((position, item, vote))

    threads = [threading.Thread(target=keep_voting, args=(name,)) for name in secrets]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while sum(map(len, acknowledged.values())) < 25 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.kill()
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert sum(map(len, acknowledged.values())) >= 25

    restarted = rating_server(db)
    stored = votes_in_db(db)
    for name, acks in acknowledged.items():
        votes = stored.get(name, [])
        assert votes[: len(acks)] == acks  # every acknowledged vote, exactly once, in order
        assert len(votes) - len(acks) <= 1  # at most the one in flight at the kill
        rater = raters[name]
        rater.client.base_url = restarted.url  # same browser, same session cookie
        view = rater.start()
        assert view.position == len(votes) + 1  # resumes at the first unanswered tile
        rater.close()


def test_raters_cannot_reach_each_other(shared) -> None:
    db, secrets = shared.db, shared.raters("pair", 2)
    with sqlite3.connect(db) as conn:
        foreign_item = conn.execute(
            "SELECT i.id FROM items i JOIN studies s ON s.id = i.study_id WHERE s.name = 'other'"
        ).fetchone()[0]
    ann = simulated_rater(shared.url, "pair00", secrets["pair00"])
    ben = simulated_rater(shared.url, "pair01", secrets["pair01"])
    # images of another study are not served, even though the file is in the same store
    assert (image_store_dir(db) / f"{foreign_item}.png").is_file()
    with pytest.raises(RatingClientError, match="404"):
        ann.fetch_tile(foreign_item)
    with pytest.raises(RatingClientError, match="404"):
        ann.fetch_tile(ben.view.token)  # nor another rater's tiles
    # a vote naming an item other than the one at the rater's current place is refused
    ben_first = ben.view.token
    ann.view = TileView(ann.view.position, foreign_item, "", "")
    view = ann.vote("real")
    assert "not assigned" in view.message and votes_in_db(db, secrets) == {}
    # the admin export is not for raters; the progress page shows only one's own place
    assert ann.client.get("/admin/votes.csv").status_code == 404
    ann.start()
    ann.vote("synthetic")
    assert ben.start().position == 1 and ben.view.token == ben_first
    assert list(votes_in_db(db, secrets)) == ["pair00"]


def test_failed_logins_are_throttled(shared) -> None:
    secrets = shared.raters("lock", 2)
    with httpx.Client(base_url=shared.url) as client:
        for name in ("lock00", " lock00", "lock00 ", "\tlock00", "lock00"):  # spaces do not make a fresh name
            response = client.post("/login", data={"name": name, "secret": "wrong"})
            assert response.headers["location"].endswith("error=unknown")
        response = client.post("/login", data={"name": "lock00", "secret": secrets["lock00"]})
        assert response.headers["location"].endswith("error=throttled")  # even the right secret waits
        assert "Too many failed logins" in client.get(response.headers["location"]).text
        assert "evil text" not in client.get("/login?error=evil%20text").text  # no text from the URL
        ok = client.post("/login", data={"name": "lock01", "secret": secrets["lock01"]})
        assert ok.headers["location"] == "/"  # other raters from this address still get in
    # the name is locked wherever the guesses come from (an address is only slowed down)
    elsewhere = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(base_url=shared.url, transport=elsewhere) as client:
        response = client.post("/login", data={"name": "lock00", "secret": secrets["lock00"]})
        assert response.headers["location"].endswith("error=throttled")
    with sqlite3.connect(shared.db) as conn:
        query = "SELECT secret_hash FROM raters WHERE name IN ('lock00', 'lock01') ORDER BY name"
        hashes = [row[0] for row in conn.execute(query)]
    assert all(h.startswith("scrypt$") for h in hashes) and secrets["lock00"] not in hashes[0]
    assert hashes[0].split("$")[4] != hashes[1].split("$")[4]  # salted: a salt of its own per rater


def test_raters_cannot_call_admin_events(shared) -> None:
    from rater_app.admin_ui import NOT_ADMIN

    db, secrets = shared.db, shared.raters("adm", 2)
    ann = simulated_rater(shared.url, "adm00", secrets["adm00"])
    config = ann.client.get("/config").json()
    elements = {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}
    board = next(c for c, elem in elements.items() if elem == "dashboard")
    # every admin event (page load, timer, refresh, audit, add, reset, disable, enable) outputs the dashboard
    events = [d for d in config["dependencies"] if board in d["outputs"]]
    assert len(events) == 8
    with sqlite3.connect(db) as conn:
        pilot = "JOIN studies s ON s.id = i.study_id WHERE s.name = 'pilot'"
        rows = conn.execute(f"SELECT i.source, i.original_path FROM items i {pilot}").fetchall()
    sources, paths = {source for source, _ in rows}, {Path(path) for _, path in rows}
    forbidden = {
        "adm01",
        *sources - {"real"},
        *(p.name for p in paths),
        *(p.parent.parent.name for p in paths),
    }
    refused = 0
    for event in events:
        target = event["targets"][0][0]
        body = {
            "data": ["adm01" if elements.get(target) != "add-rater" else "adm99"] * len(event["inputs"]),
            "event_data": None,
            "fn_index": event["id"],
            "trigger_id": target,
            "session_hash": ann.session_hash,
        }
        try:
            answer = str(ann._queued(body) if event.get("queue") is not False else ann._direct(body))
        except RatingClientError as error:  # gr.Error: the handler refused on the server
            answer = str(error)
            assert NOT_ADMIN.lower() in answer.lower(), answer
            refused += 1
        leaked = sorted(token for token in forbidden if token in answer)
        assert not leaked, f"admin event {event['id']} answered a rater with {leaked}"
    assert refused == 7  # all but the page load, which gives a rater nothing
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM admin_actions").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM raters WHERE disabled_at IS NOT NULL").fetchone()[0] == 0
        added = conn.execute("SELECT count(*) FROM raters WHERE name LIKE 'adm%'").fetchone()[0]
    assert added == 2  # the add event added no rater
    assert simulated_rater(shared.url, "adm01", secrets["adm01"]).view.position == 1  # secret not reset


def test_identical_votes_at_once_store_one(shared) -> None:
    secrets = shared.raters("twin", 1)
    rater = simulated_rater(shared.url, "twin00", secrets["twin00"])
    fn_index, trigger, _ = rater._events["vote-real"]
    body = {
        "data": [rater.view.token, None, None],
        "fn_index": fn_index,
        "trigger_id": trigger,
        "session_hash": rater.session_hash,
        "event_data": None,
    }
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda _: rater.client.post("/gradio_api/run/predict", json=body), range(4)))
    assert all(answer.status_code == 200 for answer in answers)
    assert len(votes_in_db(shared.db)["twin00"]) == 1


def test_vote_from_a_page_older_than_the_server(tmp_path, rating_server) -> None:
    from rater_app.ui import STATE_LOST

    db, secrets = make_study(tmp_path, raters=1)
    server = rating_server(db)
    rater = simulated_rater(server.url, "r00", secrets["r00"])
    server.kill()
    restarted = rating_server(db)
    rater.client.base_url = restarted.url  # the page was loaded from the old process
    view = rater.vote("real")
    assert view.position == 1 and view.message == STATE_LOST and votes_in_db(db) == {}
    assert rater.vote("real").position == 2 and len(votes_in_db(db)["r00"]) == 1


def route_paths(routes, prefix: str = "") -> list[str]:
    """Every path the app answers, descending into mounted apps (Gradio mounts its own)."""
    paths = []
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI's include_router wrapper
        if included is not None:
            paths += route_paths(included.routes, prefix)
            continue
        path = prefix + getattr(route, "path", "")
        paths.append(path or "/")
        children = getattr(getattr(route, "app", None), "routes", None) or getattr(route, "routes", None)
        if children:
            paths += route_paths(children, path)
    return paths


def test_every_route_needs_a_login(shared) -> None:
    from rater_app.server import build_app, gradio_environment

    db = shared.db
    environment = dict(os.environ)
    paths = set(route_paths(build_app(db, "pilot").routes))
    changed = {key for key in {*os.environ, *environment} if os.environ.get(key) != environment.get(key)}
    # A library call leaves the process environment alone; only Gradio's own Blocks sets this
    # one, whenever analytics are off.
    assert changed <= {"HF_HUB_DISABLE_TELEMETRY"}
    # `serve` (the process's entry point) gives Gradio a temp dir per deployment, beside the database
    assert gradio_environment(db)["GRADIO_TEMP_DIR"] == f"{db.resolve()}.gradio"
    concrete = {re.sub(r"\{[^}]+\}", "x", path.replace("{token}", "0" * 24)) for path in paths if path}
    concrete |= {f"/gradio_api/file={db}", f"/gradio_api/file={image_store_dir(db)}"}
    assert "/gradio_api/info" in concrete and "/config" in concrete and "/gradio_api/upload" in concrete
    assert len(concrete) > 40
    with httpx.Client(base_url=shared.url) as anonymous:
        for path in sorted(concrete - {"/login"}):
            for method in ("GET", "POST"):
                response = anonymous.request(method, path)
                assert response.status_code in (303, 401), (method, path, response.status_code)
