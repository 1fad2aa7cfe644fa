"""`study audit`: a clean study passes; each kind of leak is found and fails the command."""

from __future__ import annotations

import hashlib
import io
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from rater_app.audit import audit_study
from rater_app.create import blinded_png, create_study
from rater_app.padding import pad_png
from rater_app.raters import add_raters
from rater_app.store import image_store_dir

from ..conftest import histosynth


@pytest.fixture
def study(tmp_path, make_pool, write_study) -> Path:
    classes = ("ADI", "TUM")
    sources = {name: make_pool(name, classes=classes, per_class=8) for name in ("real", "gen-a", "gen-b")}
    db = tmp_path / "study.db"
    create_study(write_study(sources, images_per_cell=8), db)
    add_raters(str(db), "pilot", ["ann", "ben", "cy"])
    return db


def first_item(db: Path) -> Path:
    with sqlite3.connect(db) as conn:
        item = conn.execute("SELECT id FROM items ORDER BY id LIMIT 1").fetchone()[0]
    return image_store_dir(db) / f"{item}.png"


def test_clean_study_passes(study) -> None:
    report = audit_study(study, "pilot")
    assert report.passed, report.lines()
    assert sum(line.startswith("order: ") for line in report.lines()) == 3
    result = histosynth("study", "audit", "--db", str(study), "--study", "pilot")
    assert result.returncode == 0 and "PASSED" in result.stdout


def test_metadata_chunk_is_a_leak(study) -> None:
    path = first_item(study)
    info = PngInfo()
    info.add_text("Software", "styleGAN2")
    Image.open(path).save(path, pnginfo=info)
    report = audit_study(study, "pilot")
    assert any("metadata chunks tEXt" in leak for leak in report.leaks)
    result = histosynth("study", "audit", "--db", str(study), "--study", "pilot")
    assert result.returncode == 1 and "LEAK:" in result.stdout


def test_other_size_or_mode_is_a_leak(study) -> None:
    path = first_item(study)
    Image.open(path).resize((224, 224)).convert("RGBA").save(path)
    leaks = audit_study(study, "pilot").leaks
    assert any("224x224" in leak for leak in leaks) and any("colour type 6" in leak for leak in leaks)
    assert any("differ from those recorded" in leak for leak in leaks)


def test_missing_image_is_a_leak(study) -> None:
    first_item(study).unlink()
    assert any("unreadable" in leak for leak in audit_study(study, "pilot").leaks)


def test_order_sorted_by_source_is_a_leak(study) -> None:
    with sqlite3.connect(study) as conn:
        rater = conn.execute("SELECT id FROM raters WHERE name = 'ben'").fetchone()[0]
        rows = conn.execute(
            """SELECT a.token, a.item_id FROM assignments a JOIN items i ON i.id = a.item_id
               WHERE a.rater_id = ? ORDER BY i.class, i.source, a.position""",
            [rater],
        ).fetchall()
        conn.execute("DELETE FROM assignments WHERE rater_id = ?", [rater])
        conn.executemany(
            "INSERT INTO assignments (rater_id, position, item_id, repeat, token) VALUES (?, ?, ?, 0, ?)",
            [(rater, position, item, token) for position, (token, item) in enumerate(rows, start=1)],
        )
    leaks = audit_study(study, "pilot").leaks
    assert len(leaks) == 1 and "order of rater 'ben' is associated with the source" in leaks[0]


def test_png_layout_rejects_other_formats() -> None:
    from rater_app.audit import png_layout

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="JPEG")
    with pytest.raises(ValueError, match="not a PNG"):
        png_layout(buffer.getvalue())


def test_unequal_byte_lengths_are_a_leak(study) -> None:
    path = first_item(study)
    longer = pad_png(blinded_png(np.asarray(Image.open(path))), path.stat().st_size + 50)
    path.write_bytes(longer)  # a valid, padded tile, 50 bytes longer than the others
    with sqlite3.connect(study) as conn:
        conn.execute(
            "UPDATE items SET png_sha256 = ? WHERE id = ?", [hashlib.sha256(longer).hexdigest(), path.stem]
        )
    leaks = audit_study(study, "pilot").leaks
    assert len(leaks) == 1 and leaks[0].startswith("PNG byte lengths differ (visible as Content-Length)")
    assert "ADI/real" in leaks[0]
