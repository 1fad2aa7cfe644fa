"""The web surface around login: CSRF, proxies, throttling, uploads, headers, CORS and Host.

Each test plays one adversary of docs/threat-model.md against a real `histosynth rate` server.
"""

from __future__ import annotations

import re
import statistics
import time
from pathlib import Path

import httpx
import pytest

from rater_app.auth import LoginThrottle
from rater_app.create import create_study
from rater_app.raters import add_raters

from ..conftest import build_pool, histosynth
from .conftest import RunningServer, study_toml
from .simulated_rater import simulated_rater

SECURITY_HEADERS = {
    "x-frame-options": "DENY",
    "content-security-policy": "frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
FORM_TOKEN = re.compile(r'name="form_token" value="([^"]+)"')


@pytest.fixture(scope="module")
def served(tmp_path_factory, module_rating_server) -> tuple[Path, dict[str, str], RunningServer]:
    """One study and its server for the tests that play against the default settings.

    Together they fail fewer logins than the throttle allows (5 per name, 20 per address), so
    sharing the server changes no test's answer. Returns (database, logins, server).
    """
    folder = tmp_path_factory.mktemp("surface")
    sources = {
        "real": build_pool(folder / "real", per_class=2),
        "gen": build_pool(folder / "gen", per_class=2),
    }
    db = folder / "study.db"
    create_study(study_toml(folder, sources, name="secret-stylegan-study"), db)
    logins = {r.name: r.secret for r in add_raters(str(db), "secret-stylegan-study", ["ann", "ben"])}
    return db, logins, module_rating_server(db)


@pytest.fixture(scope="module")
def proxied(served, module_rating_server) -> RunningServer:
    """The shared study served as behind a reverse proxy: forwarding headers are believed from
    127.0.0.1 only, and only the host names the proxy sends (rating.example.org, 127.0.0.1) pass."""
    proxy = ("--trusted-proxy", "127.0.0.1")
    names = ("--allowed-host", "rating.example.org", "--allowed-host", "127.0.0.1")
    return module_rating_server(served[0], args=(*proxy, *names))


def test_login_csrf_needs_the_form_token(served) -> None:
    _, logins, server = served
    base = server.url
    credentials = {"name": "ann", "secret": logins["ann"]}
    with httpx.Client(base_url=base) as victim:  # a browser on another site's page auto-posting
        for origin in ("https://evil.example", "null"):
            response = victim.post("/login", data=credentials, headers={"Origin": origin})
            assert response.status_code == 403 and "histosynth_session" not in response.cookies
        form = victim.get("/login")
        token = FORM_TOKEN.search(form.text).group(1)
        cookie = form.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/login" in cookie
        stolen = victim.post(
            "/login", data={**credentials, "form_token": token}, headers={"Origin": "https://evil.example"}
        )
        assert stolen.status_code == 403
        # our own form under Referrer-Policy: no-referrer: Origin "null", the token and its cookie
        own = victim.post("/login", data={**credentials, "form_token": token}, headers={"Origin": "null"})
        assert own.status_code == 303 and own.headers["location"] == "/"
        session = own.headers["set-cookie"].lower()
        assert "histosynth_session=" in session and "httponly" in session and "samesite=strict" in session


def test_the_page_names_who_is_logged_in(served) -> None:
    _, logins, server = served
    base = server.url
    rater = simulated_rater(base, "ann", logins["ann"])
    config = rater.client.get("/config").json()
    on_load = next(d for d in config["dependencies"] if d["targets"][0][1] == "load" and not d["inputs"])
    body = {"data": [], "fn_index": on_load["id"], "session_hash": rater.session_hash, "event_data": None}
    output = rater._queued({**body, "trigger_id": on_load["targets"][0][0]})
    assert any("Logged in as <b>ann</b>" in str(value) for value in output)


def failed_login_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "failed login" in line]


@pytest.mark.parametrize("trusted", [False, True])
def test_forwarded_for_only_from_the_trusted_proxy(served, proxied, trusted) -> None:
    server, name = (proxied, "zed-trusted") if trusted else (served[2], "zed-untrusted")
    forged = {"X-Forwarded-For": "198.51.100.7, 203.0.113.9"}
    httpx.post(f"{server.url}/login", data={"name": name, "secret": "x"}, headers=forged)
    time.sleep(0.2)
    (line,) = [line for line in failed_login_lines(server.log_text()) if repr(name) in line]
    # the proxy's own (last) entry when trusted; the real peer otherwise
    assert line.endswith("from 203.0.113.9" if trusted else "from 127.0.0.1"), line


def test_throttle_locks_names_and_slows_addresses() -> None:
    now = [0.0]
    throttle = LoginThrottle(
        name_limit=5, window=900, address_free=20, address_step=2, max_wait=30, clock=lambda: now[0]
    )
    for address in range(5):  # one name guessed from five addresses: locked everywhere
        throttle.failed("ann", f"10.0.0.{address}")
    assert throttle.name_locked("ann") and not throttle.name_locked("ben")
    for index in range(5):  # unknown names lock the same way, so a lock reveals no rater
        throttle.failed("nobody", f"10.0.1.{index}")
    assert throttle.name_locked("nobody")
    for index in range(40):  # a clinic behind one NAT, or a sprayer: slowed, never locked
        throttle.failed(f"name{index}", "192.0.2.1")
    assert throttle.wait_for("192.0.2.1") == 2 and throttle.wait_for("192.0.2.1") == 4
    waits = [throttle.wait_for("192.0.2.1") for _ in range(20)]
    assert waits[:13] == [6 + 2 * i for i in range(13)] and waits[13:] == [None] * 7  # queue full
    now[0] = 40.0
    assert throttle.wait_for("192.0.2.1") == 2  # the queue drains: the address may try again
    assert throttle.wait_for("192.0.2.2") == 0  # others are not slowed
    now[0] = 1000.0
    assert not throttle.name_locked("ann") and throttle.wait_for("192.0.2.1") == 0  # the window passed


def test_login_timing_and_answers_do_not_reveal_names(served) -> None:
    base = served[2].url
    timings: dict[str, list[float]] = {"known": [], "unknown": []}
    answers = set()
    with httpx.Client(base_url=base) as client:
        for attempt in range(4):
            for kind, name in (("known", ["ann", "ben"][attempt % 2]), ("unknown", f"nobody{attempt}")):
                started = time.perf_counter()
                response = client.post("/login", data={"name": name, "secret": "wrong"})
                timings[kind].append(time.perf_counter() - started)
                answers.add(response.headers["location"].replace(name, "NAME"))
    assert answers == {"/login?name=NAME&error=unknown"}
    ratio = statistics.median(timings["known"]) / statistics.median(timings["unknown"])
    assert 0.5 < ratio < 2, timings  # both pay for one scrypt check


def test_login_fields_are_capped(served) -> None:
    server = served[2]
    with httpx.Client(base_url=server.url) as client:
        response = client.post("/login", data={"name": "n" * 3000, "secret": "s"})
        assert response.status_code == 303 and len(response.headers["location"]) < 120
        assert client.post("/login", data={"name": "ann", "secret": "s" * 5000}).status_code == 413
        assert client.get("/login?name=" + "q" * 3000).text.count("q" * 65) == 0
    time.sleep(0.2)
    lines = failed_login_lines(server.log_text())
    assert lines and all("n" * 65 not in line and len(line) < 200 for line in lines)


def test_uploads_are_refused_and_no_path_is_sent(served) -> None:
    db, logins, server = served
    base, tmp_path = server.url, db.parent
    rater = simulated_rater(base, "ann", logins["ann"])
    for route in ("/gradio_api/upload", "/gradio_api/upload?upload_id=x", "/gradio_api/upload_progress"):
        response = rater.client.post(route, files={"files": ("notes.txt", b"hello")})
        assert response.status_code == 404 and str(tmp_path) not in response.text
    assert not list(Path(f"{db}.gradio").rglob("notes.txt"))
    for path in ("/", "/config", "/gradio_api/info", "/login"):
        text = rater.client.get(path).text
        assert str(tmp_path) not in text and "/tmp/" not in text, path


def test_security_headers_on_every_response(served) -> None:
    _, logins, server = served
    base = server.url
    rater = simulated_rater(base, "ann", logins["ann"])
    responses = [
        httpx.get(f"{base}/login"),
        httpx.post(f"{base}/login", data={"name": "x", "secret": "y"}),
        httpx.get(f"{base}/config"),  # 401
        httpx.get(f"{base}/", headers={"Accept": "text/html"}),  # 303 to the login
        rater.client.get("/"),
        rater.client.get("/config"),
        rater.client.get("/theme.css"),
        rater.client.get(f"/tiles/{rater.view.token}.png"),
        rater.client.get("/tiles/nope.png"),
    ]
    for response in responses:
        missing = {k: v for k, v in SECURITY_HEADERS.items() if response.headers.get(k) != v}
        assert not missing, (response.request.url, response.status_code, missing)
    assert rater.client.get("/").headers["cache-control"] == "no-store"


def test_no_cors_for_other_sites(served, proxied) -> None:
    base = proxied.url
    rater = simulated_rater(base, "ann", served[1]["ann"])
    port = base.rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"rating.example.org:{port}"):  # as on a LAN or behind a proxy
        for origin in ("https://evil.example", "null", f"http://localhost:{port}"):
            headers = {"Origin": origin, "Host": host}
            for response in (
                rater.client.get("/config", headers=headers),
                rater.client.options("/config", headers={**headers, "Access-Control-Request-Method": "GET"}),
                rater.client.get(f"/tiles/{rater.view.token}.png", headers=headers),
            ):
                cors = {k: v for k, v in response.headers.items() if k.startswith("access-control-")}
                assert not cors, (host, origin, response.request.method, cors)


def test_host_header_is_not_copied_into_pages(served) -> None:
    _, logins, server = served
    base = server.url
    rater = simulated_rater(base, "ann", logins["ann"])
    for host in ('evil.example"><script>alert(1)</script>', "a b", "x" * 300, "evil.example:1:2"):
        for path in ("/", "/config", "/login"):
            response = rater.client.get(path, headers={"Host": host})
            assert response.status_code == 400 and "script" not in response.text, (host, path)
    forwarded = rater.client.get("/config", headers={"X-Forwarded-Host": "evil.example"})
    assert "evil.example" not in forwarded.text  # forwarding headers count only from --trusted-proxy


def test_only_allowed_host_names_reach_the_page(served, proxied) -> None:
    """A loopback server answers only to loopback names: a rebinding site's name is refused.

    With --allowed-host, the names given and no others reach Gradio (which writes Host into its page).
    """
    loopback = served[2].url
    port = loopback.rsplit(":", 1)[1]
    for host in ("rebind.evil.example", "rating.example.org", "10.0.0.7"):
        for path in ("/login", "/config", "/"):
            response = httpx.get(f"{loopback}{path}", headers={"Host": f"{host}:{port}"})
            assert response.status_code == 400 and host not in response.text, (host, path)
    for host in ("127.0.0.1", "localhost", "[::1]", "LOCALHOST"):
        assert httpx.get(f"{loopback}/login", headers={"Host": f"{host}:{port}"}).status_code == 200, host
    named = proxied.url
    assert httpx.get(f"{named}/login", headers={"Host": "rating.example.org"}).status_code == 200
    assert httpx.get(f"{named}/login", headers={"Host": "localhost"}).status_code == 400  # not named


def test_login_page_has_a_neutral_title(served, rating_server, make_pool, write_study, tmp_path) -> None:
    page = httpx.get(f"{served[2].url}/login").text
    assert "secret-stylegan-study" not in page and "stylegan" not in page.lower()
    assert "<h1>Rating study</h1>" in page
    titled_db = tmp_path / "titled.db"
    sources = {"real": make_pool("real2", per_class=2), "gen": make_pool("gen2", per_class=2)}
    create_study(
        write_study(sources, name="titled", file_name="t.toml", title="Skin <tissue> study"), titled_db
    )
    titled = httpx.get(f"{rating_server(titled_db).url}/login").text
    assert "<h1>Skin &lt;tissue&gt; study</h1>" in titled and "titled" not in titled.replace("Skin", "")


def test_a_root_path_that_is_not_a_plain_path_is_refused_in_one_line(tmp_path) -> None:
    for bad in ("histo", "/histo/../admin", "/a b", "/histo?x=1", "//evil.example"):
        result = histosynth("rate", "--db", str(tmp_path / "none.db"), "--root-path", bad)
        assert result.returncode == 1 and result.stderr.count("\n") == 1, (bad, result.stderr)
        assert result.stderr.startswith(f"error: --root-path {bad!r}"), result.stderr
    demo = histosynth("demo", "--dir", str(tmp_path / "demo"), "--no-launch", "--root-path", "/histo")
    assert demo.returncode == 1 and demo.stderr == (
        "error: --root-path /histo needs --url, the proxy's public address "
        "(for example https://lab.example.org/histo), for the login links\n"
    )
    assert not (tmp_path / "demo").exists()  # refused before anything is written
