"""The rating server: login, blinded tile delivery and the Gradio page behind one gate.

A FastAPI app wraps Gradio so that a single middleware decides about every request: apart
from the login form, nothing - page, asset, Gradio API route, file route or tile - answers
without a valid session of this study. Tiles are served by our own route, which checks that
the rater may see that place of their order now (`voting.may_fetch`) and sends the stored PNG
with only its padding bytes renewed for the showing, so the bytes a browser receives have the
same format, metadata and length for every source, and a repeat's differ from its first
showing's. `rater_app.web_guard` wraps it all (proxy headers, refused routes, headers).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from html import escape
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from histosynth.errors import StudyError
from histosynth.urls import LOGIN_PATH, login_url
from rater_app import store
from rater_app.auth import AccountDisabled, Identity, LoginThrottle, identity_for, login, logout
from rater_app.bundle import build_bundle
from rater_app.export import export_votes
from rater_app.padding import showing_png
from rater_app.store import Study, connect, ensure_writable, hold_open, image_store_dir
from rater_app.viewer import CSS, SCRIPT_FILE, head_html, script_name
from rater_app.voting import fetchable_item
from rater_app.web_guard import WebGuard, default_allowed_hosts

log = logging.getLogger(__name__)

SESSION_COOKIE = "histosynth_session"
FORM_COOKIE = "histosynth_login_form"  # the login form's anti-CSRF token (double submit)
PUBLIC_PATHS = {LOGIN_PATH}
# Gradio's upload routes: the app takes no uploads, and an upload's reply names a server path.
REFUSED_PREFIXES = ("/gradio_api/upload", "/upload")
LOGIN_ERRORS = {
    "unknown": "Name or secret not recognised.",
    "throttled": "Too many failed logins for this name; wait 15 minutes or ask the study's admin.",
    "slowed": "Too many failed logins from your network; wait a minute and try again.",
    "disabled": "This account is disabled; ask the study's admin.",
}
MAX_NAME_CHARS = 64  # the longest rater name; longer input is cut before it reaches a log or a URL
MAX_SECRET_CHARS = 256
MAX_LOGIN_BODY = 4096  # bytes of the login form; anything larger is refused unread
NEUTRAL_TITLE = "Rating study"
SESSION_CACHE_TTL = 5.0  # seconds a resolved session is believed; a session ended elsewhere stops within it
TILE_HEADERS = {"Cache-Control": "private, max-age=86400, immutable"}  # WebGuard adds the rest
ASSET_PREFIX = "/rater-assets/"  # ours alone: Gradio serves its own files under /static/ and /assets/
# The name carries the content's hash, so the file never changes under its URL; private like the
# tiles, since it answers only behind the login (see _add_viewer_script_route).
SCRIPT_HEADERS = {"Cache-Control": "private, max-age=31536000, immutable"}


def resolve_study(db_path: str | Path, study: str | None) -> Study:
    """The study to serve: the named one, or the database's only study when none is named."""
    with connect(db_path) as db:
        if study is not None:
            return store.find_study(db, study)
        names = store.study_names(db)
        if len(names) != 1:
            found = ", ".join(names) if names else "none"
            raise StudyError(f"{db_path}: name the study to serve with --study (studies here: {found})")
        return store.find_study(db, names[0])


def gradio_environment(db_path: str | Path) -> dict[str, str]:
    """The environment Gradio must find in a process that serves the study of `db_path`.

    Gradio reads its temp/upload folder from `GRADIO_TEMP_DIR` when its modules are imported
    and in a dozen places after, with no per-app setting, so only the process that runs the
    server (`serve`) may set it: per deployment, beside the database, never a shared /tmp/gradio.
    """
    return {"GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(Path(db_path).resolve()) + ".gradio"}


def build_app(
    db_path: str | Path,
    study: str | None = None,
    trusted_proxy: str | None = None,
    allowed_hosts: frozenset[str] | None = None,
    root_path: str = "",
) -> FastAPI:
    """The complete rating app for one study of `db_path`, ready for uvicorn.

    Leaves the process environment alone; `serve` sets Gradio's (`gradio_environment`).

    Args:
        db_path: the study database.
        study: the study to serve; None for the database's only one.
        trusted_proxy: the address of a reverse proxy whose `X-Forwarded-*` headers are
            believed (client address, scheme, host); from anyone else they are dropped.
        allowed_hosts: the host names the app answers to (others get 400); None: any
            well-formed name.
        root_path: the public sub-path (`histosynth.urls.root_path`, e.g. `/histo`) of a proxy
            that strips it before passing requests on: the app's routes stay where they are,
            and every URL it writes (redirects, the login form, cookie paths, Gradio's assets
            and API) carries the prefix. "" when the app is at the root of its site.

    Raises:
        StudyError: no such study, several and none named, or a database the app cannot write.
    """
    db_path = str(Path(db_path).resolve())
    served = resolve_study(db_path, study)
    ensure_writable(db_path)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.state.wal_anchor = hold_open(db_path)
    sessions = SessionCache(lambda token: identity_for(db_path, token))

    def current(token: str | None) -> Identity | None:
        identity = sessions.get(token)
        return identity if identity is not None and identity.study_id == served.id else None

    app.add_middleware(LoginGate, resolve=current, login_path=root_path + LOGIN_PATH)
    _add_login_routes(app, db_path, served, sessions, root_path)
    _add_tile_route(app, db_path)
    _add_admin_routes(app, db_path, served.name)
    script_src = _add_viewer_script_route(app)
    app = _mount_page(app, db_path, served.id, current, sessions.forget_rater, script_src, root_path)
    # added last: outermost
    app.add_middleware(WebGuard, trusted_proxy=trusted_proxy, allowed_hosts=allowed_hosts)
    return app


def _add_login_routes(
    app: FastAPI, db_path: str, study: Study, sessions: SessionCache, root_path: str
) -> None:
    """The login form, its submission (CSRF-checked and throttled) and logout.

    The routes answer at LOGIN_PATH and /logout; the URLs they write (the form's action, the
    redirects, the cookies' paths) are the public ones, under `root_path`.
    """
    title = study.settings.title or NEUTRAL_TITLE
    throttle = LoginThrottle()
    public_login, public_root = root_path + LOGIN_PATH, root_path + "/"

    @app.get(LOGIN_PATH, response_class=HTMLResponse)
    def login_form(request: Request, name: str = "", error: str = "") -> Response:
        form_token = secrets.token_urlsafe(16)
        page = HTMLResponse(
            _login_page(title, name[:MAX_NAME_CHARS], LOGIN_ERRORS.get(error, ""), form_token, public_login)
        )
        page.set_cookie(
            FORM_COOKIE,
            form_token,
            httponly=True,
            samesite="strict",
            path=public_login,
            max_age=3600,
            secure=request.url.scheme == "https",
        )
        return page

    @app.post(LOGIN_PATH)
    async def login_submit(request: Request) -> Response:
        form = await _login_form(request)
        if form is None:
            return PlainTextResponse("login form too large", status_code=413)
        if not _from_our_form(request, form):  # login CSRF: another site posting its account into our form
            return PlainTextResponse(
                "login refused: the form was not sent from this site's login page; reload it", status_code=403
            )
        name, secret = form.get("name", "").strip(), form.get("secret", "")
        address = request.client.host if request.client else "unknown"
        shown = name[:MAX_NAME_CHARS]
        if throttle.name_locked(shown):
            log.warning("login locked for %r (from %s)", shown, address)
            return _back_to_login(root_path, shown, "throttled")
        wait = throttle.wait_for(address)
        if wait is None:
            log.warning("login refused from %s: too many failures from this address", address)
            return _back_to_login(root_path, shown, "slowed")
        await asyncio.sleep(wait)
        token = None
        if len(name) <= MAX_NAME_CHARS and len(secret) <= MAX_SECRET_CHARS:
            try:
                token = await run_in_threadpool(login, db_path, study.name, name, secret)
            except AccountDisabled:
                log.info("login of disabled rater %r from %s refused", shown, address)
                return _back_to_login(root_path, shown, "disabled")
        if token is None:
            throttle.failed(shown, address)
            log.info("failed login for %r from %s", shown, address)
            return _back_to_login(root_path, shown, "unknown")
        response = RedirectResponse(public_root, status_code=303)
        secure = request.url.scheme == "https"  # behind an HTTPS proxy the cookie never travels in clear
        response.set_cookie(
            SESSION_COOKIE, token, httponly=True, samesite="strict", path=public_root, secure=secure
        )
        return response

    @app.get("/logout")
    def logout_route(request: Request) -> Response:
        token = request.cookies.get(SESSION_COOKIE)
        logout(db_path, token)
        sessions.forget(token)
        response = RedirectResponse(public_login, status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=public_root)
        return response


def _add_tile_route(app: FastAPI, db_path: str) -> None:
    """`/tiles/<token>.png`: a tile the rater may see now (or prefetch), with renewed padding."""
    images = image_store_dir(db_path)

    @app.get("/tiles/{token}.png")
    def tile(token: str, request: Request) -> Response:
        identity: Identity = request.state.identity
        item_id = None if identity.rater_id is None else fetchable_item(db_path, identity.rater_id, token)
        if item_id is None:  # not this rater's, or a place they may not see (yet)
            return PlainTextResponse("not found", status_code=404)
        path = images / f"{item_id}.png"
        try:
            content = path.read_bytes()
        except OSError:
            log.error("tile %s is missing from the image store %s", item_id, images)
            return PlainTextResponse("tile missing from the study's image store", status_code=500)
        return Response(showing_png(content, token), media_type="image/png", headers=TILE_HEADERS)


def _add_viewer_script_route(app: FastAPI) -> str:
    """`/rater-assets/viewer.<hash>.js`: the page's viewer script; returns its URL for the page's head.

    The file is read once, here, so the name and the bytes served under it always agree; any
    other name under the prefix is 404, so nothing but this one file can be reached through it.
    It stays behind the login like every other route (only the login form answers without a
    session): the script holds no study data and would be harmless in public, but the only page
    that loads it is itself behind the login, and "nothing but /login without a session" is the
    one rule that `test_every_route_needs_a_login` checks for every route.

    The URL is relative, like the tiles', so the page works under a proxy's path prefix.
    """
    content = SCRIPT_FILE.read_bytes()
    served_name = script_name(content)

    @app.get(ASSET_PREFIX + "{name:path}")
    def viewer_script(name: str) -> Response:
        if name != served_name:
            return PlainTextResponse("not found", status_code=404)
        return Response(content, media_type="text/javascript", headers=SCRIPT_HEADERS)

    return ASSET_PREFIX.lstrip("/") + served_name


def _add_admin_routes(app: FastAPI, db_path: str, study_name: str) -> None:
    """`/admin/votes.csv` and `/admin/study.zip` for the study's admin; 404 for raters.

    The ZIP runs the evaluator (seconds): a plain `def` route, so FastAPI runs it in a worker
    thread and the other requests go on meanwhile.
    """

    @app.get("/admin/votes.csv")
    def admin_votes(request: Request) -> Response:
        if not request.state.identity.is_admin:
            return PlainTextResponse("not found", status_code=404)
        return Response(
            export_votes(db_path, study_name),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{study_name}-votes.csv"'},
        )

    @app.get("/admin/study.zip")
    def admin_bundle(request: Request) -> Response:
        if not request.state.identity.is_admin:
            return PlainTextResponse("not found", status_code=404)
        return Response(
            build_bundle(db_path, study_name),
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{study_name}-study.zip"'},
        )


def _mount_page(
    app: FastAPI,
    db_path: str,
    study_id: int,
    current: Callable[[str | None], Identity | None],
    end_sessions: Callable[[int], None],
    script_src: str,
    root_path: str,
) -> FastAPI:
    """Mount the Gradio page at `/`, its user taken from the session the gate resolved.

    `end_sessions(rater_id)` forgets a rater's cached sessions, so that the admin page's
    disable and reset take effect at once in this process rather than after the cache's ttl.
    `script_src` is the viewer script's URL, loaded by the page's head. Gradio writes its
    asset and API URLs under `root_path`, which a proxy that strips the prefix cannot tell it.
    """
    import gradio as gr

    from rater_app.ui import build_blocks

    def gradio_user(request: Request) -> str | None:
        identity = getattr(request.state, "identity", None) or current(request.cookies.get(SESSION_COOKIE))
        return identity.name if identity is not None else None

    return gr.mount_gradio_app(
        app,
        build_blocks(db_path, study_id, end_sessions, root_path),
        path="/",
        auth_dependency=gradio_user,
        footer_links=[],
        run_history=False,
        blocked_paths=[db_path, str(image_store_dir(db_path))],
        show_error=False,  # gr.Error texts are shown; other exceptions (which may name paths) are not
        max_file_size="1mb",  # the app takes no uploads; the upload route is refused in WebGuard anyway
        css=CSS,
        head=head_html(script_src),
        root_path=root_path or None,
    )


class SessionCache:
    """Remember what a session token resolves to for a few seconds.

    A page load fetches dozens of assets, each behind the login gate; without this every one
    of them would open the database. A session ended elsewhere (a secret reset or a disabled
    rater from the CLI) stops working within `ttl` seconds; logging out here, and a reset or
    disable from this server's admin page (`forget_rater`), forget it at once.
    """

    def __init__(
        self, resolve: Callable[[str], Identity | None], ttl: float = SESSION_CACHE_TTL, size: int = 10_000
    ):
        self.resolve = resolve
        self.ttl = ttl
        self.size = size
        self._entries: dict[str, tuple[Identity | None, float]] = {}
        self._lock = threading.Lock()

    def get(self, token: str | None) -> Identity | None:
        if not token:
            return None
        now = time.monotonic()
        with self._lock:
            cached = self._entries.get(token)
        if cached is not None and cached[1] > now:
            return cached[0]
        identity = self.resolve(token)
        with self._lock:
            if len(self._entries) >= self.size:
                self._entries.clear()
            self._entries[token] = (identity, now + self.ttl)
        return identity

    def forget(self, token: str | None) -> None:
        with self._lock:
            self._entries.pop(token or "", None)

    def forget_rater(self, rater_id: int) -> None:
        """Forget every cached session of one rater (their tokens are not known here)."""
        with self._lock:
            for token in [t for t, (who, _) in self._entries.items() if who and who.rater_id == rater_id]:
                del self._entries[token]


class LoginGate:
    """ASGI middleware in front of everything: no valid session of this study, no answer.

    With a session, Gradio's upload routes still answer 404 (REFUSED_PREFIXES).

    A plain ASGI class rather than `@app.middleware("http")`, which would re-wrap every
    streamed Gradio response; this one only looks at the cookie and passes the request on.
    """

    def __init__(
        self, app: ASGIApp, resolve: Callable[[str | None], Identity | None], login_path: str = LOGIN_PATH
    ) -> None:
        self.app = app
        self.resolve = resolve
        self.login_path = login_path  # the public address of the form, under a proxy's sub-path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        identity = self.resolve(connection.cookies.get(SESSION_COOKIE))
        if identity is not None and scope["type"] == "http" and scope["path"].startswith(REFUSED_PREFIXES):
            await PlainTextResponse("not found", status_code=404)(scope, receive, send)
            return
        if identity is not None:
            scope.setdefault("state", {})["identity"] = identity
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 4401})
            return
        wants_page = scope["method"] == "GET" and "text/html" in connection.headers.get("accept", "")
        response = (
            RedirectResponse(self.login_path, status_code=303)
            if wants_page
            else JSONResponse({"detail": "login required"}, status_code=401)
        )
        await response(scope, receive, send)


def serve(
    db_path: str | Path,
    study: str | None = None,
    host: str = "127.0.0.1",
    port: int = 7860,
    trusted_proxy: str | None = None,
    allowed_hosts: Sequence[str] = (),
    root_path: str = "",
) -> None:
    """Run the rating app in this process until interrupted (Ctrl-C); see `build_app`.

    `allowed_hosts` empty: the default for the bound address (`default_allowed_hosts`).

    This is the process's entry point (`histosynth rate`, `histosynth demo`), so it is where
    Gradio's process-wide settings are made, before anything imports Gradio.
    """
    import uvicorn

    os.environ.update(gradio_environment(db_path))
    names = frozenset(name.lower() for name in allowed_hosts) or default_allowed_hosts(host)
    app = build_app(db_path, study, trusted_proxy=trusted_proxy, allowed_hosts=names, root_path=root_path)
    public = f", public under {root_path}/ behind the proxy" if root_path else ""
    log.info("rating app on http://%s:%d/ (study database %s%s)", host, port, db_path, public)
    # WebGuard, not uvicorn, decides whom to believe about forwarding headers.
    uvicorn.run(app, host=host, port=port, log_level="warning", proxy_headers=False, server_header=False)


async def _login_form(request: Request) -> dict[str, str] | None:
    """The login form's fields, read up to MAX_LOGIN_BODY bytes; None when the body is larger."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_LOGIN_BODY:
            return None
    try:
        fields = parse_qs(body.decode("utf-8", errors="replace"), max_num_fields=5)
    except ValueError:  # more fields than a login form has: treat it as an empty form
        return {}
    return {key: values[0] for key, values in fields.items()}


def _from_our_form(request: Request, form: dict[str, str]) -> bool:
    """Whether a login POST came from our own login page, not from another site's auto-posting form.

    Browsers send Origin with every POST, but under `Referrer-Policy: no-referrer` it is "null"
    even for our own form, so a browser's POST must also carry the form token that /login put
    both into the page and into a SameSite=Strict cookie, which another site can neither read
    nor make the browser send. A request without Origin is not a browser (scripts, the
    simulated rater), so nobody's browser can be made to log in with it.
    """
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("x-forwarded-host") or request.headers.get("host", "")
    if origin != "null" and urlsplit(origin).netloc != host:
        return False
    cookie, sent = request.cookies.get(FORM_COOKIE, ""), form.get("form_token", "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), sent.encode())


def _back_to_login(root_path: str, name: str, error: str) -> Response:
    """Back to the form with an error code; only fixed texts are shown, never text from the URL."""
    return RedirectResponse(f"{login_url(root_path, name)}&error={quote(error)}", status_code=303)


def _login_page(title: str, name: str, error: str, form_token: str, action: str) -> str:
    """The login form; `title` is the study's own title or a neutral one, never the study's name."""
    notice = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)} - log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; display: flex; justify-content: center; margin-top: 10vh; }}
form {{ display: grid; gap: 0.6rem; width: 18rem; }}
input, button {{ font-size: 1rem; padding: 0.4rem; }}
.error {{ color: #b00020; }}
</style></head>
<body><form method="post" action="{escape(action)}">
<input type="hidden" name="form_token" value="{escape(form_token)}">
<h1>{escape(title)}</h1>
{notice}
<label>Name <input name="name" id="name" autocomplete="username" value="{escape(name)}" required
  {"" if name else "autofocus"}></label>
<label>Secret <input name="secret" id="secret" type="password" {"autofocus" if name else ""}
  autocomplete="current-password" required></label>
<button type="submit" id="login">Log in</button>
</form></body></html>"""
