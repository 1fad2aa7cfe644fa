"""`study create`: reproducible sampling, blinded PNG copies, provenance only in the database,
and all-or-nothing on bad input."""

from __future__ import annotations

import hashlib
import io
import re
import sqlite3
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histosynth.errors import ConfigError, HistosynthError, StudyError
from histosynth.sampling import sample_files
from rater_app.create import blinded_png, create_study
from rater_app.padding import pad_png, showing_png
from rater_app.store import image_store_dir

from ..conftest import histosynth


def png_chunks(data: bytes) -> list[str]:
    """The chunk types of a PNG file, in order."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = [], 8
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        chunks.append(kind.decode())
        offset += 12 + length
    return chunks


@pytest.fixture
def three_sources(make_pool) -> dict[str, Path]:
    return {
        "real": make_pool("real", per_class=5, suffix=".tif"),
        "KLF8-DM": make_pool("klf8", per_class=4),
        "styleGAN2": make_pool("sg2", per_class=3, suffix=".jpg"),
    }


def item_rows(db: Path) -> list[dict]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM items ORDER BY class, source, original_path")]


def test_creates_blinded_items(tmp_path, three_sources, write_study) -> None:
    db = tmp_path / "study.db"
    created = create_study(write_study(three_sources), db)
    assert created.n_items == 2 * 2 * 3 and created.classes == ["ADI", "TUM"]
    rows = item_rows(db)
    assert len(rows) == 12
    store = image_store_dir(db)
    assert sorted(p.name for p in store.iterdir()) == sorted(f"{r['id']}.png" for r in rows)
    assert len({(store / f"{r['id']}.png").stat().st_size for r in rows}) == 1  # one length for all
    for row in rows:
        assert re.fullmatch(r"[0-9a-f]{24}", row["id"])
        data = (store / f"{row['id']}.png").read_bytes()
        chunks = png_chunks(data)
        # the critical chunks, and one padding chunk of random bytes right before IEND
        assert chunks[0] == "IHDR" and chunks[-2:] == ["paDd", "IEND"]
        assert set(chunks) == {"IHDR", "IDAT", "paDd", "IEND"}
        with Image.open(store / f"{row['id']}.png") as image:
            assert image.size == (256, 256) and image.mode == "RGB" and not image.info
        original = Path(row["original_path"])
        assert original.is_file() and row["sha256"] == hashlib.sha256(original.read_bytes()).hexdigest()
        assert row["png_sha256"] == hashlib.sha256(data).hexdigest()
        assert original.parent.name == row["class"]
    counts = {(r["class"], r["source"]) for r in rows}
    assert len(counts) == 6


def test_pixels_are_the_bilinear_upscale(tmp_path, make_pool, write_study) -> None:
    sources = {"real": make_pool("real", per_class=2), "gen": make_pool("gen", per_class=2)}
    db = tmp_path / "s.db"
    create_study(write_study(sources), db)
    row = item_rows(db)[0]
    with Image.open(row["original_path"]) as original:
        expected = np.asarray(original.convert("RGB").resize((256, 256), Image.Resampling.BILINEAR))
    served = np.asarray(Image.open(image_store_dir(db) / f"{row['id']}.png"))
    np.testing.assert_array_equal(served, expected)


def test_sampling_is_reproducible_and_seeded(tmp_path, three_sources, write_study) -> None:
    def sampled(db_name: str, **fields) -> list[str]:
        db = tmp_path / db_name
        create_study(write_study(three_sources, file_name=f"{db_name}.toml", **fields), db)
        return sorted(r["original_path"] for r in item_rows(db))

    first, again = sampled("a.db"), sampled("b.db")
    assert first == again
    assert sampled("c.db", seed=8) != first


def test_adding_a_source_keeps_the_other_samples(tmp_path, three_sources, write_study, make_pool) -> None:
    create_study(write_study(three_sources, file_name="a.toml"), tmp_path / "a.db")
    more = {**three_sources, "VQF8-DM": make_pool("vq", per_class=3)}
    create_study(write_study(more, file_name="b.toml"), tmp_path / "b.db")
    before = {r["original_path"] for r in item_rows(tmp_path / "a.db")}
    after = {r["original_path"] for r in item_rows(tmp_path / "b.db") if r["source"] != "VQF8-DM"}
    assert before == after


def test_adding_a_class_keeps_the_other_samples_and_draws_by_the_core_rule(
    tmp_path, make_pool, write_study
) -> None:
    classes = ("ADI", "MUC", "TUM")
    sources = {
        "real": make_pool("real", classes=classes, per_class=6),
        "gen": make_pool("gen", classes=classes),
    }
    create_study(write_study(sources, file_name="a.toml", classes=["ADI", "TUM"]), tmp_path / "a.db")
    create_study(write_study(sources, file_name="b.toml", classes=list(classes)), tmp_path / "b.db")
    before = {r["original_path"] for r in item_rows(tmp_path / "a.db")}
    after = {r["original_path"] for r in item_rows(tmp_path / "b.db") if r["class"] != "MUC"}
    assert before == after
    # The draw of each cell is the core's seeded sampler over the pool's sorted files, scoped by
    # source and class (histosynth.sampling), so the trainer and evaluator draw the same way.
    expected = {
        str(path.resolve())
        for source, folder in sources.items()
        for class_name in classes
        for path in sample_files(sorted((folder / class_name).iterdir()), 2, 7, source, class_name)
    }
    assert {r["original_path"] for r in item_rows(tmp_path / "b.db")} == expected


def test_default_classes_come_from_the_real_source(tmp_path, make_pool, write_study) -> None:
    sources = {
        "real": make_pool("real", classes=("ADI", "TUM")),
        "gen": make_pool("gen", classes=("ADI", "BACK", "TUM")),
    }
    created = create_study(write_study(sources), tmp_path / "s.db")
    assert created.classes == ["ADI", "TUM"]


def test_two_studies_share_one_database(tmp_path, three_sources, write_study) -> None:
    db = tmp_path / "s.db"
    create_study(write_study(three_sources, name="one", file_name="1.toml"), db)
    create_study(write_study(three_sources, name="two", file_name="2.toml"), db)
    assert len(item_rows(db)) == 24


def test_cli_prints_admin_secret_once(tmp_path, three_sources, write_study) -> None:
    result = histosynth("study", "create", str(write_study(three_sources)), "--db", str(tmp_path / "s.db"))
    assert result.returncode == 0, result.stderr
    admin_line = next(line for line in result.stdout.splitlines() if line.startswith("admin\t"))
    secret = admin_line.split("\t")[1]
    assert len(secret) >= 16 and secret.encode() not in (tmp_path / "s.db").read_bytes()


# --- bad input: one line naming the file or field, non-zero exit, nothing changed ---------------


def snapshot(db: Path) -> tuple:
    store = image_store_dir(db)
    files = sorted(str(p.relative_to(store)) for p in store.rglob("*")) if store.exists() else None
    rows = None
    if db.exists():
        with sqlite3.connect(db) as conn:
            rows = [list(conn.execute(f"SELECT * FROM {t} ORDER BY 1")) for t in ("studies", "items")]
    return db.exists(), files, rows


def corrupt(path: Path) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


BAD_CASES = {
    "missing folder": (lambda s, t: {**s, "KLF8-DM": t / "no-such-pool"}, {}, "no-such-pool"),
    "unknown class": (lambda s, t: s, {"classes": ["ADI", "LYM"]}, "class LYM"),
    "missing class": (lambda s, t: {**s, "KLF8-DM": s["one-class"]}, {}, "class TUM"),
    "corrupt image": (lambda s, t: {**s, "KLF8-DM": s["corrupt"]}, {}, "bad-TUM-001.png"),
    "truncated image": (lambda s, t: {**s, "KLF8-DM": s["truncated"]}, {}, "cut-ADI-000.png"),
    "too few images": (lambda s, t: s, {"images_per_cell": 4}, "3 images, study.images_per_cell needs 4"),
    "same source name twice": (lambda s, t: {**s, "klf8-dm": s["KLF8-DM"]}, {}, "duplicate source name"),
    "repeats beyond items": (lambda s, t: s, {"repeats": 100}, "study.repeats"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
@pytest.mark.parametrize("existing_db", [False, True], ids=["new-db", "existing-db"])
def test_bad_input_changes_nothing(tmp_path, make_pool, write_study, case, existing_db) -> None:
    pools = {
        "real": make_pool("real", per_class=4),
        "KLF8-DM": make_pool("klf8", per_class=3),
        "one-class": make_pool("one", classes=("ADI",)),
        "corrupt": make_pool("bad", per_class=2),
        "truncated": make_pool("cut", per_class=2),
    }
    corrupt(pools["corrupt"] / "TUM" / "bad-TUM-001.png")
    truncate(pools["truncated"] / "ADI" / "cut-ADI-000.png")
    db = tmp_path / "study.db"
    good = {"real": pools["real"], "KLF8-DM": pools["KLF8-DM"]}
    if existing_db:
        create_study(write_study(good, name="earlier", file_name="earlier.toml"), db)
    edit_sources, fields, expected = BAD_CASES[case]
    sources = edit_sources({**good, **{k: v for k, v in pools.items() if k not in good}}, tmp_path)
    sources = {k: v for k, v in sources.items() if k in good or k == "klf8-dm"}
    before = snapshot(db)
    result = histosynth("study", "create", str(write_study(sources, **fields)), "--db", str(db))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert snapshot(db) == before


def test_malformed_toml_and_existing_name(tmp_path, three_sources, write_study) -> None:
    db = tmp_path / "s.db"
    study = write_study(three_sources)
    create_study(study, db)
    before = snapshot(db)
    with pytest.raises(StudyError, match="already exists"):
        create_study(study, db)
    broken = tmp_path / "broken.toml"
    broken.write_text("[study\nname=")
    result = histosynth("study", "create", str(broken), "--db", str(db))
    assert result.returncode == 1 and "broken.toml: malformed TOML" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(db) == before


def test_not_a_study_database(tmp_path, three_sources, write_study) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(HistosynthError, match="not a histosynth study database"):
        create_study(write_study(three_sources), other)
    assert not image_store_dir(other).exists()


def test_config_errors_are_config_errors(tmp_path, write_study, make_pool) -> None:
    sources = {"real": make_pool("real", per_class=1), "gen": make_pool("gen", per_class=1)}
    with pytest.raises(ConfigError, match="needs 2"):
        create_study(write_study(sources), tmp_path / "s.db")
    assert not (tmp_path / "s.db").exists()


def test_unwritable_paths_are_one_line_errors(tmp_path, three_sources, write_study) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    result = histosynth("study", "create", str(write_study(three_sources)), "--db", str(blocker / "s.db"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and str(blocker) in lines[0], result.stderr
    assert blocker.read_text() == "not a folder" and sorted(p.name for p in tmp_path.iterdir()) == [
        "afile",
        "pools",
        "study.toml",
    ]
    db = tmp_path / "s.db"
    create_study(write_study(three_sources), db)
    result = histosynth(
        "study", "export", "--db", str(db), "--study", "pilot", "--out", str(blocker / "v.csv")
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and str(blocker) in lines[0], result.stderr


def test_padding_keeps_pixels_and_refuses_what_does_not_fit() -> None:
    rgb = np.random.default_rng(1).integers(0, 255, size=(16, 16, 3), dtype=np.uint8)
    plain = blinded_png(rgb)
    assert showing_png(plain, "ab" * 12) == plain  # nothing to renew in an unpadded PNG
    padded = pad_png(plain, len(plain) + 100)
    shown = showing_png(padded, "ab" * 12)
    assert len(padded) == len(shown) == len(plain) + 100 and shown != padded
    for data in (padded, shown):
        with Image.open(io.BytesIO(data)) as image:
            assert not image.info and np.array_equal(np.asarray(image), rgb)
    with pytest.raises(ValueError, match="cannot be padded"):
        pad_png(plain, len(plain) + 20)
    with pytest.raises(ValueError, match="not a PNG"):
        pad_png(padded[:-12], len(plain) + 200)
