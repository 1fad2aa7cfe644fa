"""Logins and sessions for the rater app.

Sessions live in the study database (by token digest), not in server memory, so a restarted
server keeps every rater logged in and they resume where they were. Failed logins lock the
name and slow the client address down (`LoginThrottle`), which makes guessing a secret over
HTTP hopeless without locking a whole clinic out.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from rater_app import store
from rater_app.credentials import token_digest, verify_secret
from rater_app.raters import ADMIN_NAME
from rater_app.store import connect, transaction

SESSION_SECONDS = 30 * 24 * 3600  # a study runs for weeks; a rater should not be logged out mid-way
_MAX_KEYS = 100_000


@dataclass(frozen=True)
class Identity:
    """Who is logged in: a rater of the study, or its admin (`rater_id` is None)."""

    study_id: int
    name: str
    rater_id: int | None

    @property
    def is_admin(self) -> bool:
        return self.rater_id is None


class AccountDisabled(Exception):
    """The name and secret are right, but an admin has disabled the rater."""


def login(db_path: str, study: str, name: str, secret: str) -> str | None:
    """Check a name and secret; on success store a new session and return its token.

    Raises:
        AccountDisabled: the secret is right and the rater disabled. Only someone holding the
            secret learns that, so it tells no one else whether the name is a rater's.
    """
    with connect(db_path) as db:
        study_record = store.find_study(db, study)
        if name == ADMIN_NAME:
            stored, rater_id = study_record.admin_secret_hash, None
        else:
            rater = store.rater_secret_hash(db, study_record.id, name)
            if rater is None:
                # Spend the same time as a real check, so response times do not reveal names.
                verify_secret(secret, study_record.admin_secret_hash)
                return None
            rater_id, stored = rater
        if not verify_secret(secret, stored):
            return None
        if rater_id is not None and store.rater_disabled(db, rater_id):
            raise AccountDisabled(name)
        token = secrets.token_urlsafe(32)
        now = time.time()
        with transaction(db):
            store.insert_session(
                db, token_digest(token), study_record.id, rater_id, now, now + SESSION_SECONDS
            )
    return token


def identity_for(db_path: str, token: str | None) -> Identity | None:
    """The identity behind a session token, or None for a missing, unknown or expired one."""
    if not token:
        return None
    with connect(db_path) as db:
        owner = store.session_owner(db, token_digest(token), time.time())
    if owner is None:
        return None
    study_id, rater_id, name = owner
    return Identity(study_id=study_id, name=name or ADMIN_NAME, rater_id=rater_id)


def logout(db_path: str, token: str | None) -> None:
    """End one session."""
    if not token:
        return
    with connect(db_path) as db, transaction(db):
        store.delete_session(db, token_digest(token))


class LoginThrottle:
    """Failed logins: lock a name after a few, slow an address down after many.

    A name (known or not, so that a lock says nothing about who is a rater) is locked for the
    rest of `window` after `name_limit` failures from anywhere: guessing one rater's secret
    stays hopeless even from many addresses. An address is never locked, because a whole
    clinic may share one behind NAT: after `address_free` failures in the window, each further
    attempt from it waits for its own slot `address_step` seconds after the previous one, so
    spraying names is slowed to one guess per step while colleagues can still log in.
    """

    def __init__(
        self,
        name_limit: int = 5,
        window: float = 900.0,
        address_free: int = 20,
        address_step: float = 2.0,
        max_wait: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name_limit = name_limit
        self.window = window
        self.address_free = address_free
        self.address_step = address_step
        self.max_wait = max_wait
        self.clock = clock
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._next_slot: dict[str, float] = {}
        self._lock = threading.Lock()

    def name_locked(self, name: str) -> bool:
        """True when this name failed `name_limit` times within the window."""
        with self._lock:
            return self._count(("name", name), self.clock()) >= self.name_limit

    def wait_for(self, address: str) -> float | None:
        """Seconds this attempt from `address` must wait first, or None to refuse it now.

        Reserves the slot, so concurrent attempts from one address queue up one step apart;
        an attempt whose slot would be more than `max_wait` away is refused at once.
        """
        now = self.clock()
        with self._lock:
            if self._count(("address", address), now) < self.address_free:
                return 0.0
            slot = max(now, self._next_slot.get(address, now)) + self.address_step
            if slot - now > self.max_wait:
                return None
            self._next_slot[address] = slot
            return slot - now

    def failed(self, name: str, address: str) -> None:
        """Count one failed login against the name and the address."""
        now = self.clock()
        with self._lock:
            for key in (("name", name), ("address", address)):
                self._count(key, now)
                self._failures.setdefault(key, deque()).append(now)
            if len(self._failures) > _MAX_KEYS:  # forget idle keys, so sprayed names cannot fill memory
                for key in list(self._failures):
                    self._count(key, now)
                for key in [key for key, slot in self._next_slot.items() if slot < now]:
                    del self._next_slot[key]

    def _count(self, key: tuple[str, str], now: float) -> int:
        failures = self._failures.get(key)
        if failures is None:
            return 0
        while failures and now - failures[0] > self.window:
            failures.popleft()
        if not failures:
            del self._failures[key]
            return 0
        return len(failures)
