"""The pool format: a folder `<pool>/<CLASS>/<image>`, plus `pool.json` for generated pools.

This is exactly the layout of NCT-CRC-HE-100K and CRC-VAL-HE-7K as distributed, so a real
data set is a pool too and every tool reads real and generated tiles the same way.
Problems are reported by name (missing class, empty class, stray file), never skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from histosynth.errors import PoolError
from histosynth.files import atomic_write_text
from histosynth.images import IMAGE_SUFFIXES

MANIFEST_NAME = "pool.json"
IGNORED_NAMES = {"Thumbs.db", "desktop.ini"}


@dataclass(frozen=True)
class Pool:
    """A pool's class folders and their image files, both in sorted order.

    Sorting makes every consumer (sampling, feature caches, tables) deterministic across
    file systems, whose directory order is arbitrary.
    """

    root: Path
    files: dict[str, list[Path]] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return list(self.files)

    def __len__(self) -> int:
        return sum(len(paths) for paths in self.files.values())


def list_classes(root: str | Path) -> list[str]:
    """The class folder names of a pool, sorted; hidden folders are not classes."""
    root = _existing_dir(root)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_pool(root: str | Path, classes: Sequence[str] | None = None) -> Pool:
    """List a pool's images per class, checking the layout.

    Args:
        root: the pool folder.
        classes: the classes to read; each must be a non-empty folder. None reads every
            class folder. Folders not asked for are left alone, so a study may use a subset.

    Raises:
        PoolError: the folder is missing, has no class folders, a requested class is
            missing or empty, or a class folder holds a file that is not an image.
    """
    root = _existing_dir(root)
    present = list_classes(root)
    if not present:
        raise PoolError(f"{root}: no class folders (expected <pool>/<CLASS>/<image>)")
    wanted = list(present if classes is None else classes)
    missing = [name for name in wanted if name not in present]
    if missing:
        raise PoolError(f"{root}: no folder for class {', '.join(missing)} (found: {', '.join(present)})")
    return Pool(root=root, files={name: _class_files(root / name) for name in wanted})


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks so large scans do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(
    root: str | Path,
    *,
    generator: str,
    checkpoint: str,
    sampler: str,
    steps: int | None,
    seed: int | None,
    classes: Iterable[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write `pool.json` describing how a generated pool was made, with a sha256 per file.

    The hashes let a later study or audit prove that the images it used are the ones the
    generator wrote.
    """
    pool = read_pool(root, None if classes is None else list(classes))
    manifest = {
        "generator": generator,
        "checkpoint": checkpoint,
        "sampler": sampler,
        "steps": steps,
        "seed": seed,
        "classes": pool.classes,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": {
            path.relative_to(pool.root).as_posix(): sha256_file(path)
            for paths in pool.files.values()
            for path in paths
        },
        **(extra or {}),
    }
    target = pool.root / MANIFEST_NAME
    atomic_write_text(target, json.dumps(manifest, indent=2) + "\n")
    return target


def read_manifest(root: str | Path) -> dict[str, Any] | None:
    """The pool's `pool.json`, or None for pools without one (real data sets)."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PoolError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(manifest, dict):
        raise PoolError(f"{path}: expected a JSON object")
    return manifest


def _existing_dir(root: str | Path) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise PoolError(f"{root}: pool folder does not exist")
    return root


def _class_files(folder: Path) -> list[Path]:
    """Image files of a class folder sorted by name (scandir + string sort: fast for 10^4+ files)."""
    with os.scandir(folder) as entries:
        visible = [e for e in entries if not e.name.startswith(".") and e.name not in IGNORED_NAMES]
    nested = sorted(entry.name for entry in visible if entry.is_dir())
    if nested:
        raise PoolError(
            f"{folder / nested[0]}: folder inside a class folder (expected <pool>/<CLASS>/<image>)"
        )
    names = sorted(entry.name for entry in visible)
    stray = next((name for name in names if os.path.splitext(name)[1].lower() not in IMAGE_SUFFIXES), None)
    if stray is not None:
        raise PoolError(f"{folder / stray}: not an image ({', '.join(IMAGE_SUFFIXES)} expected)")
    if not names:
        raise PoolError(f"{folder}: class folder holds no images")
    return [folder / name for name in names]
