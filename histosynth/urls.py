"""The rating app's login address: one definition for the links the CLI prints and the server's redirects.

`histosynth study raters add` and `histosynth demo` print a login link per rater, and the rating
server sends a failed login back to the same form; both build it here, so the printed link and
the route the server answers cannot drift apart (the core imports no app, so it lives here).
"""

from __future__ import annotations

from urllib.parse import quote

LOGIN_PATH = "/login"


def login_url(base: str, name: str) -> str:
    """The link a rater (or the admin) opens to log in, with the name filled in.

    Args:
        base: the app's base URL, e.g. `http://127.0.0.1:7860`; "" for a path on the same site.
        name: the rater's name (or "admin"), percent-encoded into the query.

    Returns:
        `<base>/login?name=<name>`.
    """
    return f"{base.rstrip('/')}{LOGIN_PATH}?name={quote(name)}"
