"""The rating server: login, blinded tile delivery and the Gradio page behind one gate.

A FastAPI app wraps Gradio so that a single middleware decides about every request: apart
from the login form, nothing - page, asset, Gradio API route, file route or tile - answers
without a valid session of this study. Tiles are served by our own route, which checks that
the tile is in the logged-in rater's order and sends the stored PNG unchanged, so the bytes a
browser receives are identical in format and metadata for every source.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from html import escape
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from histosynth.errors import StudyError
from rater_app.auth import Identity, LoginThrottle, identity_for, login, logout
from rater_app.export import export_votes
from rater_app.store import connect, ensure_writable, hold_open, image_store_dir, study_row

log = logging.getLogger(__name__)

SESSION_COOKIE = "histosynth_session"
PUBLIC_PATHS = {"/login"}
LOGIN_ERRORS = {
    "unknown": "Name or secret not recognised.",
    "throttled": "Too many failed logins; wait a minute and try again.",
}
TILE_HEADERS = {
    "Cache-Control": "private, max-age=86400, immutable",
    "X-Content-Type-Options": "nosniff",
}


def resolve_study(db_path: str | Path, study: str | None) -> dict:
    """The study to serve: the named one, or the database's only study when none is named."""
    with connect(db_path) as db:
        if study is not None:
            return study_row(db, study)
        names = [row["name"] for row in db.query("SELECT name FROM studies ORDER BY name")]
        if len(names) != 1:
            found = ", ".join(names) if names else "none"
            raise StudyError(f"{db_path}: name the study to serve with --study (studies here: {found})")
        return study_row(db, names[0])


def build_app(db_path: str | Path, study: str | None = None) -> FastAPI:
    """The complete rating app for one study of `db_path`, ready for uvicorn."""
    db_path = str(Path(db_path).resolve())
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    # Gradio's temp/upload folder is per deployment (beside the database), never a shared /tmp/gradio.
    os.environ["GRADIO_TEMP_DIR"] = db_path + ".gradio"
    import gradio as gr

    from rater_app.ui import CSS, KEYBOARD_JS, build_blocks

    row = resolve_study(db_path, study)
    ensure_writable(db_path)
    study_id, study_name = row["id"], row["name"]
    store = image_store_dir(db_path)
    throttle = LoginThrottle()
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.state.wal_anchor = hold_open(db_path)

    sessions = SessionCache(lambda token: identity_for(db_path, token))

    def current(token: str | None) -> Identity | None:
        identity = sessions.get(token)
        return identity if identity is not None and identity.study_id == study_id else None

    app.add_middleware(LoginGate, resolve=current)

    @app.get("/login", response_class=HTMLResponse)
    def login_form(name: str = "", error: str = "") -> str:
        return _login_page(study_name, name, LOGIN_ERRORS.get(error, ""))

    @app.post("/login")
    def login_submit(request: Request, name: str = Form(""), secret: str = Form("")) -> Response:
        name = name.strip()
        address = request.client.host if request.client else "unknown"
        if throttle.blocked(name, address):
            log.warning("login throttled for %r from %s", name, address)
            return _back_to_login(name, "throttled")
        token = login(db_path, study_name, name, secret)
        if token is None:
            throttle.failed(name, address)
            log.info("failed login for %r from %s", name, address)
            return _back_to_login(name, "unknown")
        response = RedirectResponse("/", status_code=303)
        secure = request.url.scheme == "https"  # behind an HTTPS proxy the cookie never travels in clear
        response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict", path="/", secure=secure)
        return response

    @app.get("/logout")
    def logout_route(request: Request) -> Response:
        token = request.cookies.get(SESSION_COOKIE)
        logout(db_path, token)
        sessions.forget(token)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @app.get("/tiles/{token}.png")
    def tile(token: str, request: Request) -> Response:
        identity: Identity = request.state.identity
        item_id = None if identity.is_admin else _assigned_item(db_path, identity.rater_id, token)
        if item_id is None:
            return PlainTextResponse("not found", status_code=404)
        path = store / f"{item_id}.png"
        try:
            content = path.read_bytes()
        except OSError:
            log.error("tile %s is missing from the image store %s", item_id, store)
            return PlainTextResponse("tile missing from the study's image store", status_code=500)
        return Response(content, media_type="image/png", headers=TILE_HEADERS)

    @app.get("/admin/votes.csv")
    def admin_votes(request: Request) -> Response:
        if not request.state.identity.is_admin:
            return PlainTextResponse("not found", status_code=404)
        return Response(
            export_votes(db_path, study_name),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{study_name}-votes.csv"'},
        )

    def gradio_user(request: Request) -> str | None:
        identity = getattr(request.state, "identity", None) or current(request.cookies.get(SESSION_COOKIE))
        return identity.name if identity is not None else None

    blocks = build_blocks(db_path, study_id)
    return gr.mount_gradio_app(
        app,
        blocks,
        path="/",
        auth_dependency=gradio_user,
        footer_links=[],
        run_history=False,
        blocked_paths=[db_path, str(store)],
        show_error=True,
        max_file_size="1mb",  # the app takes no uploads; keep Gradio's upload route small
        css=CSS,
        head=KEYBOARD_JS,
    )


class SessionCache:
    """Remember what a session token resolves to for a few seconds.

    A page load fetches dozens of assets, each behind the login gate; without this every one
    of them would open the database. A session ended elsewhere (a secret reset from the CLI)
    stops working within `ttl` seconds; logging out here forgets it at once.
    """

    def __init__(self, resolve: Callable[[str], Identity | None], ttl: float = 5.0, size: int = 10_000):
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


class LoginGate:
    """ASGI middleware in front of everything: no valid session of this study, no answer.

    A plain ASGI class rather than `@app.middleware("http")`, which would re-wrap every
    streamed Gradio response; this one only looks at the cookie and passes the request on.
    """

    def __init__(self, app: ASGIApp, resolve: Callable[[str | None], Identity | None]) -> None:
        self.app = app
        self.resolve = resolve

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        identity = self.resolve(connection.cookies.get(SESSION_COOKIE))
        if identity is not None:
            scope.setdefault("state", {})["identity"] = identity
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 4401})
            return
        wants_page = scope["method"] == "GET" and "text/html" in connection.headers.get("accept", "")
        response = (
            RedirectResponse("/login", status_code=303)
            if wants_page
            else JSONResponse({"detail": "login required"}, status_code=401)
        )
        await response(scope, receive, send)


def serve(db_path: str | Path, study: str | None = None, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Run the rating app until interrupted (Ctrl-C)."""
    import uvicorn

    app = build_app(db_path, study)
    log.info("rating app on http://%s:%d/ (study database %s)", host, port, db_path)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def _assigned_item(db_path: str, rater_id: int | None, token: str) -> str | None:
    """The item behind one of this rater's showing tokens; None for anyone else's token."""
    with connect(db_path) as db:
        rows = list(
            db.query("SELECT item_id FROM assignments WHERE rater_id = ? AND token = ?", [rater_id, token])
        )
    return rows[0]["item_id"] if rows else None


def _back_to_login(name: str, error: str) -> Response:
    """Back to the form with an error code; only fixed texts are shown, never text from the URL."""
    return RedirectResponse(f"/login?name={quote(name)}&error={quote(error)}", status_code=303)


def _login_page(study: str, name: str, error: str) -> str:
    notice = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>histosynth - log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; display: flex; justify-content: center; margin-top: 10vh; }}
form {{ display: grid; gap: 0.6rem; width: 18rem; }}
input, button {{ font-size: 1rem; padding: 0.4rem; }}
.error {{ color: #b00020; }}
</style></head>
<body><form method="post" action="/login">
<h1>Rating study {escape(study)}</h1>
{notice}
<label>Name <input name="name" id="name" autocomplete="username" value="{escape(name)}" required
  {"" if name else "autofocus"}></label>
<label>Secret <input name="secret" id="secret" type="password" {"autofocus" if name else ""}
  autocomplete="current-password" required></label>
<button type="submit" id="login">Log in</button>
</form></body></html>"""
