"""Blocks of a rater's order: one per class in block order, then the repeats, as stored."""

from __future__ import annotations

import sqlite3

from rater_app.blocks import Block, block_at, order_blocks
from rater_app.create import create_study
from rater_app.raters import add_raters


def test_blocks_follow_classes_then_repeats() -> None:
    showings = [("ADI", 0), ("ADI", 0), ("TUM", 0), ("TUM", 0), ("TUM", 0), ("TUM", 1), ("ADI", 1)]
    blocks = order_blocks(showings, block_by_class=True)
    assert blocks == [Block(1, "ADI", 1, 2), Block(2, "TUM", 3, 5), Block(3, None, 6, 7)]
    assert [block.size for block in blocks] == [2, 3, 2]
    assert [block.title(len(blocks)) for block in blocks] == [
        "Block 1 of 3 (ADI)",
        "Block 2 of 3 (TUM)",
        "Block 3 of 3 (all classes)",  # the repeats mix every class: named neutrally
    ]
    assert block_at(blocks, 4) == blocks[1] and block_at(blocks, 8) is None
    assert [blocks[1].answered(frontier) for frontier in (1, 3, 4, 6, None)] == [0, 0, 1, 3, 3]
    assert order_blocks(showings, block_by_class=False) == []


def test_blocks_of_a_stored_order_match_its_classes(tmp_path, make_pool, write_study) -> None:
    sources = {
        "real": make_pool("real", classes=("ADI", "MUC", "TUM")),
        "gen": make_pool("gen", classes=("ADI", "MUC", "TUM")),
    }
    db = tmp_path / "study.db"
    create_study(write_study(sources, repeats=3), db)
    add_raters(str(db), "pilot", ["ann"])
    with sqlite3.connect(db) as conn:
        stored = conn.execute(
            "SELECT i.class, a.repeat FROM assignments a JOIN items i ON i.id = a.item_id ORDER BY a.position"
        ).fetchall()
    blocks = order_blocks(stored, block_by_class=True)
    assert [(b.class_name, b.size) for b in blocks] == [("ADI", 4), ("MUC", 4), ("TUM", 4), (None, 3)]
    for position, (class_name, repeat) in enumerate(stored, start=1):  # every position in its own block
        assert block_at(blocks, position).class_name == (None if repeat else class_name)
