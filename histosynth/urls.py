"""The rating app's addresses: the login link and the public sub-path, one definition each.

`histosynth study raters add` and `histosynth demo` print a login link per rater, and the rating
server sends a failed login back to the same form; both build it here, so the printed link and
the route the server answers cannot drift apart (the core imports no app, so it lives here).
`histosynth rate --root-path` is checked here too, before the server imports anything heavy.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from histosynth.errors import HistosynthError

LOGIN_PATH = "/login"
# One or more path segments of unreserved characters: nothing a proxy or a browser would rewrite.
_ROOT_PATH = re.compile(r"(/[A-Za-z0-9._~-]+)+")


def root_path(value: str) -> str:
    """The public sub-path the app is served under, as `/histo`; "" at the root of its site.

    Behind a proxy that strips the prefix (nginx `proxy_pass http://127.0.0.1:7860/;`, Caddy
    `handle_path /histo/*`), requests reach the app without it, so every URL the app writes
    must put it back.

    Raises:
        HistosynthError: not an absolute path of plain segments (`..`, `//`, a query, a space).
    """
    path = value.rstrip("/")
    if path and (not _ROOT_PATH.fullmatch(path) or any(part in (".", "..") for part in path.split("/"))):
        raise HistosynthError(
            f"--root-path {value!r}: expected an absolute path such as /histo "
            "(letters, digits and . _ ~ - between slashes)"
        )
    return path


def login_url(base: str, name: str) -> str:
    """The link a rater (or the admin) opens to log in, with the name filled in.

    Args:
        base: the app's base URL, e.g. `http://127.0.0.1:7860`; "" for a path on the same site.
        name: the rater's name (or "admin"), percent-encoded into the query.

    Returns:
        `<base>/login?name=<name>`.
    """
    return f"{base.rstrip('/')}{LOGIN_PATH}?name={quote(name)}"
