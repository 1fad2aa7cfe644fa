"""The trained-model folder: diffusers components plus `histosynth.json`, published safely.

A model folder is what `from_pretrained` loads (an autoencoder's `config.json` and weights at
the top, so `histosynth evaluate msssim --autoencoder DIR` takes it as is; an LDM's `unet/`,
`class_embedder/`, `vae/` and `scheduler/`), plus `histosynth.json`: the kind, the classes in
label order, the preset and every setting, the training pool's fingerprint, the steps done and
the torch and diffusers versions. `generate` and `train ldm` read that file to know what they
hold.

`histosynth.json` is written last and removed first, so it is the folder's seal: while a model
is being (re)written there is none, and a reader refuses the folder rather than mixing old and
new weights. Checkpoints (`checkpoints/`) live beside the components and are not part of the
model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from histosynth.errors import HistosynthError
from histosynth.files import atomic_write_text, fsync_folder
from histosynth.pools import sha256_file

INFO_NAME = "histosynth.json"
CHECKPOINTS = "checkpoints"
FORMAT_VERSION = 1
KINDS = ("kl-autoencoder", "vq-autoencoder", "ldm", "sd-finetune", "stylegan2", "classifier")


def write_model_info(
    folder: str | Path,
    *,
    kind: str,
    classes: Sequence[str],
    settings: dict[str, Any],
    fingerprint: dict[str, Any],
    steps: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write `histosynth.json` atomically (the seal of a complete model folder).

    Args:
        folder: the model folder, holding its components already.
        kind: one of `KINDS`.
        classes: class names in label order (label i is `classes[i]`).
        settings: every setting of the run (`trainer.core.options.to_record`), preset included.
        fingerprint: the training pool's fingerprint (`trainer.core.data.pool_fingerprint`).
        steps: optimizer steps done.
        extra: kind-specific facts (an LDM's scaling factor, the autoencoder it was trained on).
    """
    import diffusers
    import torch

    if kind not in KINDS:
        raise HistosynthError(f"model kind {kind!r}: expected one of {', '.join(KINDS)}")
    info = {
        "format": FORMAT_VERSION,
        "kind": kind,
        "classes": list(classes),
        "preset": settings.get("preset"),
        "settings": settings,
        "data_fingerprint": fingerprint,
        "steps": steps,
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        "saved": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    return atomic_write_text(Path(folder) / INFO_NAME, json.dumps(info, indent=2) + "\n")


def read_model_info(folder: str | Path, kinds: Sequence[str] | None = None) -> dict[str, Any]:
    """Read a model folder's `histosynth.json`, checking its kind.

    Args:
        folder: a model folder written by `histosynth train`.
        kinds: the kinds the caller can use; None accepts any.

    Raises:
        HistosynthError: the folder or its `histosynth.json` is missing (never trained to the
            end, or not a histosynth model), the file is not valid JSON, or the kind is not
            one the caller can use.
    """
    folder = Path(folder).expanduser()
    path = folder / INFO_NAME
    if not folder.is_dir():
        raise HistosynthError(f"{folder}: model folder does not exist")
    if not path.is_file():
        hint = (
            " (training has not finished; continue it with --resume)"
            if (folder / CHECKPOINTS).is_dir()
            else ""
        )
        raise HistosynthError(f"{path}: missing, so {folder} is not a histosynth model folder{hint}")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise HistosynthError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(info, dict) or "kind" not in info or "classes" not in info:
        raise HistosynthError(f"{path}: not a histosynth model description (no kind or classes)")
    if kinds is not None and info["kind"] not in kinds:
        raise HistosynthError(f"{folder}: a model of kind {info['kind']}, expected {' or '.join(kinds)}")
    return info


def publish_model(folder: str | Path, write: Callable[[Path], None]) -> None:
    """Replace the model components in `folder` by those `write(staging)` saves, seal removed first.

    `write` saves into a private staging folder inside `folder` (`save_pretrained` calls);
    each top-level entry it made then replaces its namesake. `histosynth.json` is removed
    before and must be written by the caller after, with `write_model_info`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INFO_NAME).unlink(missing_ok=True)
    fsync_folder(folder)
    staging = Path(tempfile.mkdtemp(prefix=".publish-", dir=folder))
    try:
        write(staging)
        for entry in sorted(staging.iterdir()):
            target = folder / entry.name
            if target.is_dir() and not target.is_symlink():
                old = Path(tempfile.mkdtemp(prefix=f".old-{entry.name}-", dir=folder))
                os.replace(target, old / entry.name)
                os.replace(entry, target)
                shutil.rmtree(old)
            else:
                os.replace(entry, target)
        fsync_folder(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def model_hash(folder: str | Path) -> str:
    """sha256 over the relative path and sha256 of every component file (not checkpoints, not the seal).

    It names the exact weights a pool came from: `pool.json`'s `checkpoint`.
    """
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if not path.is_file() or relative.parts[0] in (CHECKPOINTS, INFO_NAME):
            continue
        if any(part.startswith(".") for part in relative.parts):
            continue
        digest.update(f"{relative.as_posix()}\t{sha256_file(path)}\n".encode())
    return digest.hexdigest()
