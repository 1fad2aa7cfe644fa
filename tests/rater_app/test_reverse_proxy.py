"""A study served to other sites: HTTPS through Debian's Caddy and nginx at the sub-path /histo/.

One real `histosynth rate --root-path /histo --trusted-proxy 127.0.0.1` sits behind both proxies,
each on a free loopback port with the shipped files of docs/deploy (Caddy imports
histosynth.caddy unchanged; nginx runs nginx.conf with only its host, ports and certificate
paths replaced, and includes histosynth-nginx.conf unchanged). Chromium goes through Caddy as a
rater and as the admin; the scripted rater goes through nginx, whose event-stream settings the
votes depend on. Each proxy's certificate is checked by the clients that can be given its CA.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import ssl
import subprocess
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from rater_app.create import create_study

from ..conftest import build_pool
from .conftest import RunningServer, free_port, fresh_raters, log_in, study_toml, wait_for_tile
from .simulated_rater import simulated_rater

pytestmark = pytest.mark.browser

DEPLOY = Path(__file__).resolve().parents[2] / "docs" / "deploy"
PREFIX = "/histo"
KEYS = ["r", "s", "1", "2"]
VOTE_OF_KEY = {"r": "real", "1": "real", "s": "synthetic", "2": "synthetic"}


@dataclass(frozen=True)
class Study:
    """The served study behind the proxies: its database, admin secret and the app itself."""

    db: Path
    admin: str
    app: RunningServer

    @property
    def upstream(self) -> str:
        return self.app.url.removeprefix("http://")


@dataclass(frozen=True)
class Proxy:
    """A running proxy: the study's public address (`https://127.0.0.1:PORT/histo`) and its CA."""

    url: str
    ca: Path

    @property
    def tls(self) -> ssl.SSLContext:
        """A client context that trusts only this proxy's CA (nothing installed system-wide)."""
        return ssl.create_default_context(cafile=str(self.ca))


@pytest.fixture(scope="module")
def study(tmp_path_factory, module_rating_server) -> Study:
    folder = tmp_path_factory.mktemp("proxied")
    sources = {
        source: build_pool(folder / "pools" / pool, per_class=2)
        for source, pool in {"real": "real", "KLF8-DM": "klf8"}.items()
    }
    db = folder / "study.db"
    admin = create_study(study_toml(folder, sources, images_per_cell=2), db).admin_secret
    app = module_rating_server(db, args=("--trusted-proxy", "127.0.0.1", "--root-path", PREFIX))
    return Study(db, admin, app)


@pytest.fixture(scope="module")
def caddy(study, tmp_path_factory) -> Iterator[Proxy]:
    """Caddy with its own CA (`tls internal`, not installed anywhere), admin API off."""
    binary = shutil.which("caddy")
    if binary is None:
        pytest.skip("caddy is not installed (apt-get install caddy)")
    folder = tmp_path_factory.mktemp("caddy")
    port = free_port()
    config = folder / "Caddyfile"
    config.write_text(
        "{\n\tadmin off\n\tauto_https disable_redirects\n\tskip_install_trust\n"
        f"\thttp_port {free_port()}\n\thttps_port {port}\n\tstorage file_system {folder / 'data'}\n}}\n\n"
        f"https://127.0.0.1:{port} {{\n\tbind 127.0.0.1\n\ttls internal\n"
        f"\timport {DEPLOY / 'histosynth.caddy'} {PREFIX} {study.upstream}\n}}\n",
        encoding="utf-8",
    )
    env = {**os.environ, "HOME": str(folder), "XDG_DATA_HOME": str(folder), "XDG_CONFIG_HOME": str(folder)}
    command = [binary, "run", "--config", str(config), "--adapter", "caddyfile"]
    proxy = Proxy(
        f"https://127.0.0.1:{port}{PREFIX}", folder / "data" / "pki" / "authorities" / "local" / "root.crt"
    )
    with _running(command, folder / "caddy.log", env) as process:
        _wait_for(proxy, process, folder / "caddy.log")  # the CA is written at the first start
        yield proxy


@pytest.fixture(scope="module")
def nginx(study, tmp_path_factory) -> Iterator[Proxy]:
    """nginx in the foreground as one process, with a self-signed certificate for 127.0.0.1."""
    binary = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if binary is None or shutil.which("openssl") is None:
        pytest.skip("nginx or openssl is not installed (apt-get install nginx openssl)")
    folder = tmp_path_factory.mktemp("nginx")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    site = _replaced(
        (DEPLOY / "nginx.conf").read_text(encoding="utf-8"),
        {
            "server 127.0.0.1:7860;": f"server {study.upstream};",
            "listen 443 ssl http2;": f"listen 127.0.0.1:{port} ssl;",
            "listen 80;": f"listen 127.0.0.1:{free_port()};",
            "server_name lab.example.org;": "server_name 127.0.0.1;",
            "/etc/letsencrypt/live/lab.example.org/fullchain.pem": str(cert),
            "/etc/letsencrypt/live/lab.example.org/privkey.pem": str(key),
            "/etc/nginx/snippets/histosynth-nginx.conf": str(DEPLOY / "histosynth-nginx.conf"),
        },
    )
    temp = "".join(
        f"    {kind}_temp_path {folder / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    config = folder / "nginx.conf"
    config.write_text(
        f"daemon off;\nmaster_process off;\npid {folder / 'nginx.pid'};\nerror_log {folder / 'error.log'};\n"
        f"events {{}}\nhttp {{\n    access_log {folder / 'access.log'};\n{temp}{site}\n}}\n",
        encoding="utf-8",
    )
    command = [binary, "-p", str(folder), "-e", str(folder / "error.log"), "-c", str(config)]
    proxy = Proxy(f"https://127.0.0.1:{port}{PREFIX}", cert)
    with _running(command, folder / "nginx.log", dict(os.environ)) as process:
        _wait_for(proxy, process, folder / "error.log")
        yield proxy


def test_a_rater_and_the_admin_work_through_caddy_at_the_sub_path(study, caddy, browser) -> None:
    """Login, keyboard votes, resume after reload, the dashboard, a new rater's link and the ZIP:
    every request the browser makes stays under the prefix and succeeds; cookies are Secure."""
    [(ann, secret)] = fresh_raters(study.db, "ann").items()
    context = browser.new_context(ignore_https_errors=True, accept_downloads=True)  # Caddy's own CA
    answers: list[tuple[str, int]] = []
    context.on("response", lambda response: answers.append((response.url, response.status)))
    page = context.new_page()
    page.goto(caddy.url)  # without the slash: Caddy sends it to the page, the page to the login
    assert page.url == f"{caddy.url}/login"
    log_in(page, caddy.url, ann, secret)
    wait_for_tile(page, 1)
    for position, key in enumerate(KEYS[:2], start=1):
        page.keyboard.press(key)
        wait_for_tile(page, position + 1)
    page.reload()
    wait_for_tile(page, 3)  # resumes at the first unanswered tile
    for position, key in enumerate(KEYS[2:], start=3):
        page.keyboard.press(key)
        wait_for_tile(page, position + 1)
    cookies = {cookie["name"]: cookie for cookie in context.cookies()}
    assert cookies["histosynth_session"]["secure"] and cookies["histosynth_session"]["path"] == f"{PREFIX}/"

    admin = browser.new_context(ignore_https_errors=True, accept_downloads=True)
    admin.on("response", lambda response: answers.append((response.url, response.status)))
    board = admin.new_page()
    log_in(board, caddy.url, "admin", study.admin)
    board.wait_for_function(
        f"() => document.querySelector(\"#rater-table tr[data-rater='{ann}']\")?.innerText.includes('4 / 8')",
        timeout=30_000,
    )
    board.fill("#new-rater textarea, #new-rater input", f"zoe-{ann}")
    board.click("#add-rater")
    board.wait_for_selector("#login-line-text", timeout=20_000)
    link = board.inner_text("#login-line-text").strip().split("\t")[2]
    assert link == f"{caddy.url}/login?name=zoe-{ann}"  # the public address, not the app's own
    with board.expect_download() as download:
        board.click("#study-zip")
    with zipfile.ZipFile(io.BytesIO(Path(download.value.path()).read_bytes())) as archive:
        assert any(name.endswith(".csv") for name in archive.namelist())

    origin = caddy.url.removesuffix(PREFIX)
    outside = [(url, status) for url, status in answers if not url.startswith(caddy.url)]
    failed = [(url, status) for url, status in answers if status >= 400]
    assert not outside and not failed, (outside, failed)
    assert any(url.startswith(f"{origin}{PREFIX}/gradio_api/queue/") for url, _ in answers)


def test_caddy_gives_the_app_the_raters_address_over_verified_tls(study, caddy) -> None:
    """The address the app logs is the one Caddy saw (a forged X-Forwarded-For is dropped); the
    certificate verifies against Caddy's CA, and answers carry HSTS."""
    transport = httpx.HTTPTransport(local_address="127.0.0.3", verify=caddy.tls)
    with httpx.Client(transport=transport) as client:
        login = client.get(f"{caddy.url}/login")
        client.post(
            f"{caddy.url}/login",
            data={"name": "zed-caddy", "secret": "wrong"},
            headers={"X-Forwarded-For": "198.51.100.7"},
        )
    assert login.headers["strict-transport-security"].startswith("max-age=")
    assert _failed_login_from(study.app, "zed-caddy") == "127.0.0.3"


def test_votes_stream_through_nginx_at_the_sub_path(study, nginx) -> None:
    """The scripted rater logs in and votes through nginx (Gradio's queue as an event stream,
    unbuffered); the redirect, the Secure cookie, HSTS and the rater's address are nginx's too."""
    [(bea, secret)] = fresh_raters(study.db, "bea").items()
    rater = simulated_rater(nginx.url, bea, secret, verify=nginx.tls)
    try:
        for vote in ("real", "synthetic", "real"):
            rater.vote(vote)
        assert rater.view.position == 4 and "4 of 8" in rater.view.progress
    finally:
        rater.close()
    transport = httpx.HTTPTransport(local_address="127.0.0.4", verify=nginx.tls)
    with httpx.Client(transport=transport) as client:
        bare = client.get(nginx.url)
        done = client.post(f"{nginx.url}/login", data={"name": bea, "secret": secret})
        client.post(
            f"{nginx.url}/login",
            data={"name": "zed-nginx", "secret": "wrong"},
            headers={"X-Forwarded-For": "198.51.100.7"},
        )
    assert bare.status_code == 301 and bare.headers["location"].endswith(f"{PREFIX}/")
    assert done.headers["location"] == f"{PREFIX}/" and "secure" in done.headers["set-cookie"].lower()
    assert done.headers["strict-transport-security"].startswith("max-age=")
    assert _failed_login_from(study.app, "zed-nginx") == "127.0.0.4"


def test_the_app_itself_answers_at_its_own_paths_and_writes_public_ones(study) -> None:
    """Straight to the app (as the proxy's stripped requests arrive): routes stay, URLs carry the prefix."""
    [(cid, secret)] = fresh_raters(study.db, "cid").items()
    base = study.app.url
    assert f'action="{PREFIX}/login"' in httpx.get(f"{base}/login").text
    assert httpx.get(f"{base}/", headers={"Accept": "text/html"}).headers["location"] == f"{PREFIX}/login"
    failed = httpx.post(f"{base}/login", data={"name": cid, "secret": "wrong"})
    assert failed.headers["location"] == f"{PREFIX}/login?name={cid}&error=unknown"
    done = httpx.post(f"{base}/login", data={"name": cid, "secret": secret})
    assert done.status_code == 303 and done.headers["location"] == f"{PREFIX}/"
    assert f"Path={PREFIX}/" in done.headers["set-cookie"]
    session = {"Cookie": f"histosynth_session={done.cookies['histosynth_session']}"}  # as the proxy sends it
    page = httpx.get(f"{base}/", headers={**session, "Accept": "text/html"}).text
    roots = set(re.findall(r'"root":\s*"([^"]*)"', page))
    assert roots and all(root.rstrip("/").endswith(PREFIX) for root in roots), roots


def _failed_login_from(app: RunningServer, name: str) -> str:
    """The client address the app logged for `name`'s failed login (waits for the log line)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [
            line for line in app.log_text().splitlines() if "failed login" in line and repr(name) in line
        ]
        if lines:
            return lines[-1].rsplit(" from ", 1)[1]
        time.sleep(0.1)
    raise AssertionError(f"no failed login for {name!r} in the app's log")


def _replaced(text: str, replacements: dict[str, str]) -> str:
    """`text` with each key replaced; a key that is not there fails the test (the file changed)."""
    for old, new in replacements.items():
        assert old in text, f"docs/deploy/nginx.conf no longer has {old!r}"
        text = text.replace(old, new)
    return text


@contextmanager
def _running(command: list[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """A proxy process for a `with` block, logging to `log`, SIGTERMed (then SIGKILLed) after it."""
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for(proxy: Proxy, process: subprocess.Popen, log: Path) -> None:
    """Wait up to 30 s for the proxy to serve the login page over verified TLS; fail with its log."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited: {log.read_text(errors='replace')}")
        try:
            if proxy.ca.exists() and httpx.get(f"{proxy.url}/login", verify=proxy.tls).status_code == 200:
                return
        except (httpx.HTTPError, OSError, ssl.SSLError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{process.args[0]} did not answer within 30 s: {log.read_text(errors='replace')}")
