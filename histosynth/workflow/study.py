"""The run's blinded study, ready for `histosynth study create` (the paper's Fig. 3 needs raters)."""

from __future__ import annotations

import os
from pathlib import Path

import tomlkit

from histosynth.files import atomic_write_text

PAPER_TILES_PER_CELL = 10


def write_study(
    path: str | Path, real: str | Path, pools: dict[str, str], classes: list[str], per_class: int
) -> Path:
    """Write the paper's study design over `real` and the generated `pools` (title -> folder).

    As the paper: every class its own block, `PAPER_TILES_PER_CELL` tiles of each source per class
    (fewer where the pools are smaller), a plain real/synthetic vote. Paths are relative to the
    TOML file, so the run folder can move.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def relative(folder: str | Path) -> str:
        return Path(os.path.relpath(Path(folder).resolve(), path.parent.resolve())).as_posix()

    document = tomlkit.document()
    document.add(
        tomlkit.comment("The blinded study of this run (histosynth reproduce): histosynth study create")
    )
    document["study"] = {
        "name": "reproduce",
        "seed": 2024,
        "images_per_cell": min(PAPER_TILES_PER_CELL, per_class),
        "classes": classes,
        "block_by_class": True,
        "confidence": "none",
        "allow_changes": True,
        "repeats": 0,
    }
    document["sources"] = {
        "real": relative(real),
        **{title: relative(folder) for title, folder in pools.items()},
    }
    return atomic_write_text(path, tomlkit.dumps(document))
