"""Logins and sessions for the rater app.

Sessions live in the study database (by token digest), not in server memory, so a restarted
server keeps every rater logged in and they resume where they were. Failed logins are
throttled per name and per client address, which makes guessing a secret over HTTP slow.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass

from rater_app.credentials import token_digest, verify_secret
from rater_app.raters import ADMIN_NAME
from rater_app.store import connect, study_row, transaction

SESSION_SECONDS = 30 * 24 * 3600  # a study runs for weeks; a rater should not be logged out mid-way


@dataclass(frozen=True)
class Identity:
    """Who is logged in: a rater of the study, or its admin (`rater_id` is None)."""

    study_id: int
    name: str
    rater_id: int | None

    @property
    def is_admin(self) -> bool:
        return self.rater_id is None


def login(db_path: str, study: str, name: str, secret: str) -> str | None:
    """Check a name and secret; on success store a new session and return its token."""
    with connect(db_path) as db:
        row = study_row(db, study)
        if name == ADMIN_NAME:
            stored, rater_id = row["admin_secret_hash"], None
        else:
            raters = list(
                db.query(
                    "SELECT id, secret_hash FROM raters WHERE study_id = ? AND name = ?", [row["id"], name]
                )
            )
            if not raters:
                # Spend the same time as a real check, so response times do not reveal names.
                verify_secret(secret, row["admin_secret_hash"])
                return None
            stored, rater_id = raters[0]["secret_hash"], raters[0]["id"]
        if not verify_secret(secret, stored):
            return None
        token = secrets.token_urlsafe(32)
        now = time.time()
        with transaction(db):
            db.execute("DELETE FROM sessions WHERE expires_at <= ?", [now])
            db["sessions"].insert(
                {
                    "token_hash": token_digest(token),
                    "study_id": row["id"],
                    "rater_id": rater_id,
                    "created_at": now,
                    "expires_at": now + SESSION_SECONDS,
                }
            )
    return token


def identity_for(db_path: str, token: str | None) -> Identity | None:
    """The identity behind a session token, or None for a missing, unknown or expired one."""
    if not token:
        return None
    with connect(db_path) as db:
        rows = list(
            db.query(
                """SELECT s.study_id, s.rater_id, r.name FROM sessions s
                   LEFT JOIN raters r ON r.id = s.rater_id
                   WHERE s.token_hash = ? AND s.expires_at > ?""",
                [token_digest(token), time.time()],
            )
        )
    if not rows:
        return None
    row = rows[0]
    return Identity(study_id=row["study_id"], name=row["name"] or ADMIN_NAME, rater_id=row["rater_id"])


def logout(db_path: str, token: str | None) -> None:
    """End one session."""
    if not token:
        return
    with connect(db_path) as db, transaction(db):
        db.execute("DELETE FROM sessions WHERE token_hash = ?", [token_digest(token)])


class LoginThrottle:
    """Count failed logins in a sliding window, per (name, address) and per address.

    The pair limit stops one client from guessing one rater's secret; the looser address
    limit stops it from spraying many names. Keying on the pair (not the name alone) means a
    stranger who knows a rater's name cannot lock that rater out from another address.
    """

    def __init__(self, pair_limit: int = 5, address_limit: int = 30, window: float = 60.0) -> None:
        self.pair_limit = pair_limit
        self.address_limit = address_limit
        self.window = window
        self._failures: dict[tuple[str, ...], deque[float]] = {}
        self._lock = threading.Lock()

    def blocked(self, name: str, address: str) -> bool:
        """True when this name from this address, or this address overall, has failed too often."""
        now = time.monotonic()
        with self._lock:
            return (
                self._count((name, address), now) >= self.pair_limit
                or self._count((address,), now) >= self.address_limit
            )

    def failed(self, name: str, address: str) -> None:
        """Count one failed login."""
        now = time.monotonic()
        with self._lock:
            for key in ((name, address), (address,)):
                self._count(key, now)
                self._failures.setdefault(key, deque()).append(now)

    def _count(self, key: tuple[str, ...], now: float) -> int:
        failures = self._failures.get(key)
        if failures is None:
            return 0
        while failures and now - failures[0] > self.window:
            failures.popleft()
        if not failures:  # forget idle keys, so sprayed names cannot grow memory without bound
            del self._failures[key]
            return 0
        return len(failures)
