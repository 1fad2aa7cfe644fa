"""One rule of the workflow: run its `histosynth` command, and record what made its output.

Snakemake knows when a rule must run; this module knows how a histosynth output folder may be
reused. A folder whose step finished before (its record is in `.provenance/`) is being made
again because an input changed: it is emptied first, so that no model resumes onto other data.
A folder without a record was left by a killed run: the train and generate commands continue it
(`--resume`, and generate skips the images it already wrote). The record says, per output, the
command, its inputs' fingerprints and its files' sha256 (gathered into `reproduce.json`).
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from histosynth.files import atomic_write_text
from histosynth.pools import read_pool, sha256_file

PROVENANCE = Path(".provenance")
# what is not part of a step's result: training state kept only for --resume
SKIPPED_PARTS = ("checkpoints",)


def run_step(name: str, command: Sequence[str], inputs: Sequence[str], folder: str) -> Path:
    """Run `command` (argv) to make `folder`, then write its record `.provenance/<name>.json`.

    Raises:
        subprocess.CalledProcessError: the command failed (its own one-line error is on stderr).
    """
    record = PROVENANCE / f"{name}.json"
    target = Path(folder)
    if record.is_file():  # made before from other inputs: start it again from nothing
        record.unlink()
        shutil.rmtree(target, ignore_errors=True)
    started = time.monotonic()
    subprocess.run(list(command), check=True)
    PROVENANCE.mkdir(exist_ok=True)
    entry = {
        "step": name,
        "command": shlex.join(command),
        "inputs": {path: fingerprint(Path(path)) for path in inputs},
        "outputs": output_hashes(target),
        "seconds": round(time.monotonic() - started, 1),
    }
    atomic_write_text(record, json.dumps(entry, indent=2) + "\n")
    return record


def fingerprint(path: Path) -> str:
    """A file's sha256; a pool folder's, over its files' names, sizes and modification times.

    One `stat` per tile (100,000 in seconds, where reading them all would take minutes), and
    the modification time also tells a tile edited in place at the same size. A pool copied
    without its times reads as changed, which re-runs too much rather than too little.
    """
    if path.is_file():
        return "sha256:" + sha256_file(path)
    pool = read_pool(path)
    digest = hashlib.sha256()
    for files in pool.files.values():
        for file in files:
            status = file.stat()
            name = file.relative_to(pool.root).as_posix()
            digest.update(f"{name}\t{status.st_size}\t{status.st_mtime_ns}\n".encode())
    return "names-sizes-times:" + digest.hexdigest()


def output_hashes(folder: Path) -> dict[str, str]:
    """The sha256 of every file a step wrote, by its path in the run folder."""
    files = folder.rglob("*") if folder.is_dir() else [folder]
    return {
        file.as_posix(): sha256_file(file)
        for file in sorted(files)
        if file.is_file() and not set(SKIPPED_PARTS) & set(file.relative_to(folder).parts)
    }
