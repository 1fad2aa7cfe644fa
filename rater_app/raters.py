"""Raters of a study: who they are, their secrets, and the order in which each sees the tiles.

The order is drawn once, when the rater is added, from a secret made for that rater with
`secrets` and kept only in the database, and stored. Nothing outside the database - the study
TOML with its public seed, the pools, the rater's own name - predicts which source sits at a
position; reloading the page or restarting the server can never reshuffle it, and two raters
see different orders.
"""

from __future__ import annotations

import random
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils

from histosynth.errors import StudyError
from rater_app import store
from rater_app.credentials import hash_secret, new_secret
from rater_app.store import RaterProgress, connect, transaction

ADMIN_NAME = "admin"
_DISTINCT_ATTEMPTS = 20
_RATER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


@dataclass(frozen=True)
class NewRater:
    """A rater just added; the secret is shown once and only its hash is kept."""

    name: str
    secret: str


@dataclass(frozen=True)
class OrderedItem:
    """One place in a rater's order: the item, and whether this is its repeated showing."""

    item_id: str
    repeat: int


def add_raters(
    db_path: str, study: str, names: Sequence[str], actor: str | None = None, simulated: bool = False
) -> list[NewRater]:
    """Add raters to a study, each with a fresh login secret and their own secretly drawn order.

    Each order (with its repeats) comes from a random order secret of the rater, stored with
    them; an order that equals another rater's is drawn again while the study has room for
    distinct orders, so no two raters share a permutation by chance. The secrets are hashed
    (scrypt: tens of milliseconds each) before the write transaction opens, so adding raters
    mid-study does not hold up anyone's votes.

    `actor` ("admin" from the page, "cli:<user>" from a terminal) records one "rater.add" per
    rater in the admin record, in the same transaction; None records nothing (the demo's setup).
    `simulated` marks them as raters of `histosynth study simulate` (see `rater_app.simulate`).

    Raises:
        StudyError: a name is invalid, reserved ("admin"), repeated, or already a rater.
    """
    _check_names(names)
    added = [NewRater(name=name, secret=new_secret()) for name in names]
    hashes = {rater.name: hash_secret(rater.secret) for rater in added}
    with connect(db_path) as db:
        study_record = store.find_study(db, study)
        items = store.items_for_ordering(db, study_record.id)
    with connect(db_path) as db, transaction(db):
        insert_raters(db, study_record, items, hashes, actor, simulated)
    return added


def insert_raters(
    db: sqlite_utils.Database,
    study: store.Study,
    items: Sequence[tuple[str, str]],
    hashes: dict[str, str],
    actor: str | None,
    simulated: bool,
) -> None:
    """Insert raters (name -> secret hash) with their orders, inside the caller's transaction.

    Raises:
        StudyError: a name is already a rater of the study.
    """
    existing = set(store.rater_names(db, study.id))
    taken = [name for name in hashes if name in existing]
    if taken:
        raise StudyError(f"study {study.name!r} already has a rater named {taken[0]!r}")
    seen = {_permutation(order) for order in stored_orders(db, study.id).values()}
    for name, secret_hash in hashes.items():
        order_secret, order = _distinct_order(
            seen,
            items,
            classes=study.classes,
            block_by_class=study.settings.block_by_class,
            repeats=study.settings.repeats,
        )
        # A fresh token per showing: a repeat gets another URL than its first showing,
        # and two raters never share one, so URLs reveal nothing.
        showings = [(entry.item_id, entry.repeat, secrets.token_hex(12)) for entry in order]
        store.insert_rater(db, study.id, name, secret_hash, order_secret, showings, simulated)
        _record(db, study.id, actor, "rater.add", name)


def reset_secrets(db_path: str, study: str, names: Sequence[str], actor: str | None = None) -> list[NewRater]:
    """Give existing raters new secrets (the old ones stop working, their sessions end); their
    votes stay. `actor` records one "rater.reset" each, as in `add_raters`.

    Raises:
        StudyError: a name is not a rater of the study; then no secret changes.
    """
    renewed = [NewRater(name=name, secret=new_secret()) for name in names]
    hashes = [hash_secret(rater.secret) for rater in renewed]  # before taking the write lock
    with connect(db_path) as db, transaction(db):
        study_id = store.find_study(db, study).id
        for rater, secret_hash in zip(renewed, hashes, strict=True):
            if not store.set_rater_secret(db, study_id, rater.name, secret_hash):
                raise StudyError(f"study {study!r} has no rater named {rater.name!r}")
            _record(db, study_id, actor, "rater.reset", rater.name)
    return renewed


def set_disabled(db_path: str, study: str, names: Sequence[str], disabled: bool, actor: str) -> None:
    """Disable raters (they cannot log in, their sessions end) or enable them again.

    Their orders and votes stay, and the export keeps the votes: disabling stops a rater, it
    does not undo their work. Each change is recorded ("rater.disable" / "rater.enable") in
    the same transaction; disabling a disabled rater (or enabling an enabled one) changes and
    records nothing, so a disabled rater keeps the first time.

    Raises:
        StudyError: no names, or a name is not a rater of the study; then nothing changes.
    """
    if not names:
        raise StudyError("no rater names given")
    action = "rater.disable" if disabled else "rater.enable"
    with connect(db_path) as db, transaction(db):
        study_id = store.find_study(db, study).id
        for name in names:
            found = store.rater_id(db, study_id, name)
            if found is None:
                raise StudyError(f"study {study!r} has no rater named {name!r}")
            if store.rater_disabled(db, found) != disabled:  # no change, no record
                store.set_rater_disabled(db, study_id, name, time.time() if disabled else None)
                _record(db, study_id, actor, action, name)


def admin_record(db_path: str, study: str) -> list[store.AdminAction]:
    """Who did what to the study's raters (and results) and when, oldest first."""
    with connect(db_path) as db:
        return store.admin_actions(db, store.find_study(db, study).id)


def _record(db: sqlite_utils.Database, study_id: int, actor: str | None, action: str, target: str) -> None:
    if actor is not None:
        store.record_admin_action(db, study_id, actor, action, target)


def reset_admin_secret(db_path: str, study: str) -> str:
    """Issue a new admin secret for a study and end the admin's open sessions."""
    secret = new_secret()
    secret_hash = hash_secret(secret)
    with connect(db_path) as db, transaction(db):
        store.set_admin_secret(db, store.find_study(db, study).id, secret_hash)
    return secret


def list_raters(db_path: str, study: str) -> list[str]:
    """Names of the study's raters in the order they were added."""
    with connect(db_path) as db:
        return store.rater_names(db, store.find_study(db, study).id)


def study_status(db_path: str | Path, study: str) -> list[RaterProgress]:
    """Progress of every rater of a study, in the order they were added."""
    with connect(db_path) as db:
        return store.progress(db, store.find_study(db, study).id)


def rater_order(
    items: Sequence[tuple[str, str]],
    *,
    order_secret: str,
    classes: Sequence[str],
    block_by_class: bool,
    repeats: int,
) -> list[OrderedItem]:
    """The order in which one rater sees the study's items.

    Args:
        items: (item_id, class) pairs in a canonical order (the caller sorts them by class,
            source and original path), so that the stored order secret reproduces the order.
        order_secret: the rater's random order secret (`new_order_secret`); it alone seeds
            the shuffle, so the order cannot be computed from the study's public seed.
        classes: the block order when `block_by_class`.
        block_by_class: one block per class, each shuffled (the paper's design); otherwise
            one shuffle of everything.
        repeats: this many items, drawn at random, are shown a second time at the end, in a
            shuffled block of their own, for intra-rater reliability.
    """
    rng = random.Random(order_secret)
    if block_by_class:
        order: list[str] = []
        for class_name in classes:
            block = [item_id for item_id, item_class in items if item_class == class_name]
            rng.shuffle(block)
            order.extend(block)
    else:
        order = [item_id for item_id, _ in items]
        rng.shuffle(order)
    repeated = rng.sample(order, repeats)
    return [OrderedItem(item_id, 0) for item_id in order] + [OrderedItem(item_id, 1) for item_id in repeated]


def new_order_secret() -> str:
    """128 random bits that seed one rater's order; kept only in the database."""
    return secrets.token_hex(16)


def stored_orders(db: sqlite_utils.Database, study_id: int) -> dict[str, list[OrderedItem]]:
    """Each rater's stored order (repeats included), by rater name."""
    return {
        name: [OrderedItem(item_id, repeat) for item_id, repeat in order]
        for name, order in store.orders(db, study_id).items()
    }


def _distinct_order(
    seen: set[tuple[str, ...]],
    items: Sequence[tuple[str, str]],
    *,
    classes: Sequence[str],
    block_by_class: bool,
    repeats: int,
) -> tuple[str, list[OrderedItem]]:
    """A fresh order secret and its order, drawn again (a few times) while it repeats another's.

    In a study too small to hold a distinct order per rater the last draw is kept; the audit
    then reports the shared permutation.
    """
    for _ in range(_DISTINCT_ATTEMPTS):
        order_secret = new_order_secret()
        order = rater_order(
            items, order_secret=order_secret, classes=classes, block_by_class=block_by_class, repeats=repeats
        )
        key = _permutation(order)
        if key not in seen:
            break
    seen.add(key)
    return order_secret, order


def _permutation(order: Sequence[OrderedItem]) -> tuple[str, ...]:
    """The first showings of an order: the permutation of the study's items a rater sees."""
    return tuple(entry.item_id for entry in order if not entry.repeat)


def _check_names(names: Sequence[str]) -> None:
    if not names:
        raise StudyError("no rater names given")
    for name in names:
        if name.lower() == ADMIN_NAME:
            raise StudyError(f"rater name {name!r} is reserved for the study's admin")
        if not _RATER_NAME.match(name):
            raise StudyError(f"rater name {name!r} must be 1-64 letters, digits, '.', '_', '@' or '-'")
    repeated = sorted({name for name in names if list(names).count(name) > 1})
    if repeated:
        raise StudyError(f"rater name {repeated[0]!r} given twice")
