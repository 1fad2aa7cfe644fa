"""Orders are secret: nothing outside the database (TOML, seed, names) predicts a position's source,
and `study audit` fails a study whose orders a rater could compute or that two raters share."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

from rater_app.audit import audit_study
from rater_app.create import create_study
from rater_app.raters import add_raters
from rater_app.store import admin_actions, connect, record_admin_action, transaction

from ..conftest import histosynth

CLASSES = ("ADI", "TUM")


def make_sources(make_pool) -> dict[str, Path]:
    return {name: make_pool(name, classes=CLASSES, per_class=6) for name in ("real", "gen-a", "gen-b")}


def provenance_orders(db: Path) -> dict[str, list[tuple[str, str, int]]]:
    """Each rater's order as (source, original path, repeat): comparable across two databases."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            """SELECT r.name, i.source, i.original_path, a.repeat FROM assignments a
               JOIN raters r ON r.id = a.rater_id JOIN items i ON i.id = a.item_id
               ORDER BY r.id, a.position"""
        ).fetchall()
    orders: dict[str, list] = {}
    for name, source, path, repeat in rows:
        orders.setdefault(name, []).append((source, path, repeat))
    return orders


def test_same_toml_and_names_give_other_orders(tmp_path, make_pool, write_study) -> None:
    toml = write_study(make_sources(make_pool), images_per_cell=6, repeats=3)
    first, second = tmp_path / "first.db", tmp_path / "second.db"
    for db in (first, second):
        create_study(toml, db)
        add_raters(str(db), "pilot", ["ann", "ben"])
    one, other = provenance_orders(first), provenance_orders(second)
    assert sorted(one["ann"]) != [] and {s for s, _, _ in one["ann"]} == {"real", "gen-a", "gen-b"}
    assert sorted(x[:2] for x in one["ann"] if not x[2]) == sorted(x[:2] for x in other["ann"] if not x[2])
    assert one["ann"] != other["ann"] and one["ben"] != other["ben"]  # same tiles, other orders
    with sqlite3.connect(first) as conn:
        secrets = [row[0] for row in conn.execute("SELECT order_secret FROM raters")]
    assert len(set(secrets)) == 2 and all(len(secret) == 32 for secret in secrets)
    assert audit_study(first, "pilot").passed


def old_scheme_order(db: Path, name: str, seed: int) -> list[str]:
    """The order histosynth stored before order secrets: the seed and the name seed the shuffle."""
    with sqlite3.connect(db) as conn:
        items = conn.execute("SELECT id, class FROM items ORDER BY class, source, original_path").fetchall()
    rng = random.Random(f"{seed}:order:{name}")
    order: list[str] = []
    for class_name in CLASSES:
        block = [item for item, item_class in items if item_class == class_name]
        rng.shuffle(block)
        order.extend(block)
    return order


def rewrite_order(db: Path, name: str, order: list[str]) -> None:
    with sqlite3.connect(db) as conn:
        rater = conn.execute("SELECT id FROM raters WHERE name = ?", [name]).fetchone()[0]
        tokens = [row[0] for row in conn.execute("SELECT token FROM assignments WHERE rater_id = ?", [rater])]
        conn.execute("DELETE FROM assignments WHERE rater_id = ?", [rater])
        conn.executemany(
            "INSERT INTO assignments (rater_id, position, item_id, repeat, token) VALUES (?, ?, ?, 0, ?)",
            [(rater, position, item, tokens[position - 1]) for position, item in enumerate(order, start=1)],
        )


def test_audit_finds_orders_of_the_old_scheme(tmp_path, make_pool, write_study) -> None:
    db = tmp_path / "study.db"
    create_study(write_study(make_sources(make_pool), images_per_cell=6), db)
    add_raters(str(db), "pilot", ["ann", "ben", "cy"])
    assert audit_study(db, "pilot").passed
    rewrite_order(db, "ben", old_scheme_order(db, "ben", seed=7))  # write_study's seed
    leaks = audit_study(db, "pilot").leaks
    assert leaks == [
        "order of rater 'ben' is derivable from the study TOML (random(seed:order:name) over "
        "class/source/path)"
    ]
    result = histosynth("study", "audit", "--db", str(db), "--study", "pilot")
    assert result.returncode == 1
    assert any(
        line.startswith("LEAK: order of rater 'ben' is derivable") for line in result.stdout.splitlines()
    )


def test_audit_finds_a_seed_only_order_and_a_shared_permutation(tmp_path, make_pool, write_study) -> None:
    db = tmp_path / "study.db"
    create_study(write_study(make_sources(make_pool), images_per_cell=6), db)
    add_raters(str(db), "pilot", ["ann", "ben", "cy"])
    with sqlite3.connect(db) as conn:
        items = conn.execute("SELECT id, class FROM items ORDER BY rowid").fetchall()
    rng = random.Random(7)  # the seed alone, over the order the tiles were sampled in
    order: list[str] = []
    for class_name in CLASSES:
        block = [item for item, item_class in items if item_class == class_name]
        rng.shuffle(block)
        order.extend(block)
    rewrite_order(db, "ann", order)
    with sqlite3.connect(db) as conn:
        cy_order = [
            row[0]
            for row in conn.execute(
                "SELECT a.item_id FROM assignments a JOIN raters r ON r.id = a.rater_id"
                " WHERE r.name = 'cy' ORDER BY a.position"
            )
        ]
    rewrite_order(db, "ben", cy_order)
    leaks = audit_study(db, "pilot").leaks
    assert "order of rater 'ann' is derivable from the study TOML (random(seed) over sampling order)" in leaks
    assert "raters 'ben' and 'cy' have the same order" in leaks


def test_a_database_of_schema_1_is_migrated(tmp_path, make_pool, write_study) -> None:
    db = tmp_path / "study.db"
    create_study(write_study(make_sources(make_pool), images_per_cell=6), db)
    add_raters(str(db), "pilot", ["ann"])
    with sqlite3.connect(db) as conn:  # as histosynth wrote it before order secrets
        conn.execute("ALTER TABLE raters DROP COLUMN order_secret")
        conn.execute("ALTER TABLE raters DROP COLUMN disabled_at")
        conn.execute("ALTER TABLE raters DROP COLUMN simulated")
        conn.execute("DROP TABLE admin_actions")
        conn.execute("PRAGMA user_version = 1")
    rewrite_order(db, "ann", old_scheme_order(db, "ann", seed=7))
    add_raters(str(db), "pilot", ["ben"])
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 4
        secrets = dict(conn.execute("SELECT name, order_secret FROM raters"))
    assert secrets["ann"] is None and len(secrets["ben"]) == 32
    leaks = audit_study(db, "pilot").leaks
    assert len(leaks) == 1 and leaks[0].startswith("order of rater 'ann' is derivable")


def test_orders_are_drawn_again_until_distinct(tmp_path, make_pool, write_study) -> None:
    sources = {name: make_pool(name, classes=("ADI",), per_class=1) for name in ("real", "gen")}
    db = tmp_path / "tiny.db"
    create_study(write_study(sources, images_per_cell=1), db)  # two tiles: two possible orders
    add_raters(str(db), "pilot", ["ann", "ben"])
    orders = provenance_orders(db)
    assert orders["ann"] != orders["ben"]  # drawn again until distinct (by chance: 1 in 2)
    add_raters(str(db), "pilot", ["cy"])  # no third order exists: kept, and the audit says so
    report = audit_study(db, "pilot")
    assert report.passed  # with two possible orders, equal or derivable ones are chance: warnings
    shared = [w for w in report.warnings if "and 'cy' have the same order" in w]
    assert len(shared) == 1 and "happens by chance: p ~ 1" in shared[0]


def test_a_schema_2_database_gains_disabling_and_the_admin_record(tmp_path, make_pool, write_study) -> None:
    db = tmp_path / "study.db"
    create_study(write_study(make_sources(make_pool), images_per_cell=6), db)
    add_raters(str(db), "pilot", ["ann"])
    with sqlite3.connect(db) as conn:  # as histosynth wrote it before disabling raters
        conn.execute("ALTER TABLE raters DROP COLUMN disabled_at")
        conn.execute("ALTER TABLE raters DROP COLUMN simulated")
        conn.execute("DROP TABLE admin_actions")
        conn.execute("PRAGMA user_version = 2")
    with connect(db) as opened, transaction(opened):
        record_admin_action(opened, 1, "admin", "rater.disable", "ann")
    with connect(db) as opened:
        (action,) = admin_actions(opened, 1)
    assert (action.actor, action.action, action.target) == ("admin", "rater.disable", "ann")
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 4
        assert conn.execute("SELECT disabled_at FROM raters").fetchall() == [(None,)]
