"""The login link: one definition for the CLI's printed links and the server's redirects."""

from __future__ import annotations

from histosynth.urls import LOGIN_PATH, login_url


def test_login_url_encodes_the_name_and_joins_the_base() -> None:
    assert login_url("http://127.0.0.1:7860/", "ann") == "http://127.0.0.1:7860/login?name=ann"
    assert login_url("https://study.example.org/rate", "a.b@c d") == (
        "https://study.example.org/rate/login?name=a.b%40c%20d"
    )
    assert login_url("", "ann") == f"{LOGIN_PATH}?name=ann"  # a path on the same site, for redirects
