"""`study create`: sample tiles from the pools and copy them, blinded, into the study's store.

Blinding starts here. Each sampled tile is decoded, resized to 256 x 256 and re-encoded as a
PNG with no metadata under a random id, then padded with random bytes to the study's common
length (`rater_app.padding`), so that format, size, chunks, byte length and file names are the
same for every source; where a tile came from lives only in the database.

Creation is all or nothing. Everything that can fail on input (config, pools, decoding) runs
before the database is touched, into a private staging folder; the rows are then written in
one transaction and the files moved into the store before it commits. On any error the
staging folder, moved files and (when this call created it) the database file are removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import logging
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from histosynth.errors import ConfigError, StudyError
from histosynth.files import atomic_write_bytes, fsync_folder
from histosynth.images import PAPER_SIZE, load_rgb
from histosynth.pools import list_classes, read_pool, sha256_file
from histosynth.sampling import sample_files
from histosynth.study_config import StudyConfig, load_study_config
from histosynth.votes import REAL_SOURCE
from rater_app import store
from rater_app.credentials import hash_secret, new_secret
from rater_app.padding import pad_png, padded_length
from rater_app.store import connect, image_store_dir, transaction

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampledTile:
    """One tile chosen for the study, before it is written anywhere."""

    item_id: str
    source: str
    class_name: str
    original_path: Path
    sha256: str
    png: bytes
    png_sha256: str


@dataclass(frozen=True)
class CreatedStudy:
    """What `create_study` made; `admin_secret` is shown to the user once and never stored."""

    name: str
    n_items: int
    classes: list[str]
    sources: list[str]
    admin_secret: str
    store_dir: Path


def create_study(config_path: str | Path, db_path: str | Path) -> CreatedStudy:
    """Create a study from its TOML definition in the database `db_path`.

    Args:
        config_path: the study definition (see DESIGN.md, "Study definition").
        db_path: the SQLite file; created when missing.

    Returns:
        The study's summary, with the admin secret.

    Raises:
        ConfigError, PoolError, ImageError, StudyError: on any bad input; nothing is left behind.
    """
    config = load_study_config(config_path)
    db_path = Path(db_path)
    db_existed = db_path.exists()
    if db_existed:
        _refuse_existing_name(db_path, config.name)
    classes = study_classes(config)
    tiles = pad_tiles(sample_tiles(config, classes))
    admin_secret = new_secret()
    created_parents = [folder for folder in reversed(db_path.absolute().parents) if not folder.exists()]
    try:
        _write_study(db_path, config, classes, tiles, hash_secret(admin_secret))
    except BaseException:
        with contextlib.suppress(OSError):  # best effort: the original error is what the user needs
            if not db_existed:
                for suffix in ("", "-wal", "-shm", "-journal"):
                    Path(str(db_path) + suffix).unlink(missing_ok=True)
            image_store_dir(db_path).rmdir()
            for folder in reversed(created_parents):
                folder.rmdir()
        raise
    log.info("study %s: %d tiles from %d sources", config.name, len(tiles), len(config.sources))
    return CreatedStudy(
        name=config.name,
        n_items=len(tiles),
        classes=classes,
        sources=list(config.sources),
        admin_secret=admin_secret,
        store_dir=image_store_dir(db_path),
    )


def study_classes(config: StudyConfig) -> list[str]:
    """The study's classes: as listed in the TOML, else every class folder of the real source."""
    return list(config.classes) if config.classes is not None else list_classes(config.sources[REAL_SOURCE])


def sample_tiles(config: StudyConfig, classes: list[str]) -> list[SampledTile]:
    """Sample `images_per_cell` tiles per class and source, reproducibly, and encode them.

    Each cell is drawn by the core's seeded sampler (`histosynth.sampling.sample_files`) with
    the scope (source, class): the same seed and pools give the same tiles, and adding a source
    or a class changes no other cell's tiles.
    """
    k = config.images_per_cell
    n_tiles = k * len(classes) * len(config.sources)
    if config.repeats > n_tiles:
        raise ConfigError(f"study.repeats is {config.repeats} but the study has only {n_tiles} tiles")
    tiles: list[SampledTile] = []
    for source, folder in config.sources.items():
        pool = read_pool(folder, classes)
        for class_name in classes:
            files = pool.files[class_name]
            if len(files) < k:
                raise ConfigError(
                    f"{pool.root / class_name}: {len(files)} images, study.images_per_cell needs {k}"
                )
            for path in sample_files(files, k, config.seed, source, class_name):
                tiles.append(_encode_tile(source, class_name, path))
    return tiles


def pad_tiles(tiles: list[SampledTile]) -> list[SampledTile]:
    """The tiles padded to one common byte length, so that Content-Length says nothing of a source."""
    length = padded_length([tile.png for tile in tiles])
    padded = []
    for tile in tiles:
        png = pad_png(tile.png, length)
        padded.append(dataclasses.replace(tile, png=png, png_sha256=hashlib.sha256(png).hexdigest()))
    return padded


def blinded_png(rgb: np.ndarray) -> bytes:
    """Encode RGB uint8 as a PNG with only the critical chunks: no text, time, gamma or profile."""
    buffer = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def _encode_tile(source: str, class_name: str, path: Path) -> SampledTile:
    png = blinded_png(load_rgb(path, size=PAPER_SIZE))
    return SampledTile(
        item_id=secrets.token_hex(12),
        source=source,
        class_name=class_name,
        original_path=path.resolve(),
        sha256=sha256_file(path),
        png=png,
        png_sha256=hashlib.sha256(png).hexdigest(),
    )


def _refuse_existing_name(db_path: Path, name: str) -> None:
    with connect(db_path) as db:
        if store.has_study(db, name):
            raise StudyError(f"{db_path}: a study named {name!r} already exists")


def _write_study(
    db_path: Path, config: StudyConfig, classes: list[str], tiles: list[SampledTile], admin_hash: str
) -> None:
    images = image_store_dir(db_path)
    images.mkdir(parents=True, exist_ok=True)
    staging = Path(images, f".staging-{secrets.token_hex(8)}")
    staging.mkdir()
    moved: list[Path] = []
    try:
        for tile in tiles:
            atomic_write_bytes(staging / f"{tile.item_id}.png", tile.png)
        fsync_folder(staging)
        with connect(db_path, create=True) as db, transaction(db):
            if store.has_study(db, config.name):
                raise StudyError(f"{db_path}: a study named {config.name!r} already exists")
            study_id = store.insert_study(
                db,
                name=config.name,
                seed=config.seed,
                classes=classes,
                sources={name: str(Path(folder).resolve()) for name, folder in config.sources.items()},
                settings=config.settings(),
                admin_secret_hash=admin_hash,
            )
            store.insert_items(
                db,
                (
                    {
                        "id": tile.item_id,
                        "study_id": study_id,
                        "source": tile.source,
                        "class": tile.class_name,
                        "original_path": str(tile.original_path),
                        "sha256": tile.sha256,
                        "png_sha256": tile.png_sha256,
                    }
                    for tile in tiles
                ),
            )
            for tile in tiles:
                target = images / f"{tile.item_id}.png"
                (staging / target.name).replace(target)
                moved.append(target)
            fsync_folder(images)  # the renames reach the disk before the rows that point at them
    except BaseException:
        for path in moved:
            path.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
