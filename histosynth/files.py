"""Writing files and folders all or nothing: one atomic file write and one staged folder.

Every app writes through these two helpers, so that a crash, a full disk or a Ctrl-C never
leaves a half-written file (a vote export, a generated tile, a `histosynth.json`) or a folder
that mixes two runs.

`atomic_write_bytes` writes a temporary file beside the target, fsyncs it and renames it over
the target: readers see the old file or the new one, never a part. `staged_output` is the
folder version. Every `evaluate` command computes its results first, then writes its files into
a private staging folder beside `out`, and only then moves them in. A failure while writing leaves
`out` as it was; a success also removes the files this command owns but did not write this
time (say `roc_auc.csv` from an earlier study that had confidence ratings), so a folder never
mixes two runs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from histosynth.errors import HistosynthError

_UMASK = os.umask(0o022)  # reading the umask means setting it: restore it at once, at import time
os.umask(_UMASK)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through a fsynced temporary file and a rename.

    Args:
        path: the target; its folder must exist.
        data: the complete contents.

    Returns:
        The target path.

    Raises:
        OSError: the folder is missing or cannot be written; the temporary file is removed.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, _new_file_mode(path))  # mkstemp makes 0600; readers expect open()'s mode
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _new_file_mode(path: Path) -> int:
    """The mode the file would have if written with open(): the old file's, else 0666 less the umask."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        return 0o666 & ~_UMASK


def atomic_write_text(path: str | Path, text: str) -> Path:
    """`atomic_write_bytes` of `text` encoded as UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def fsync_folder(folder: str | Path) -> None:
    """Flush a folder's entries (new names, renames) to disk, so that they survive a power cut."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def staged_output(out: str | Path, owned: Iterable[str] = ()) -> Iterator[Path]:
    """Yield a staging folder to write into; on success publish its files into `out`.

    Args:
        out: the output folder; created on success if missing.
        owned: file names this command may write; those present in `out` but not written
            this time are removed when the new files are published.

    Raises:
        HistosynthError: `out` is not a folder or cannot be written; the message names it.
    """
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise HistosynthError(f"{out}: output path exists and is not a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-staging-", dir=out.parent))
    except OSError as error:
        raise HistosynthError(f"{out}: cannot create the output folder ({error.strerror})") from error
    try:
        yield staging
        names = sorted(path.name for path in staging.iterdir())
        out.mkdir(exist_ok=True)
        for name in names:
            os.replace(staging / name, out / name)
        for name in set(owned) - set(names):
            (out / name).unlink(missing_ok=True)
    except OSError as error:
        raise HistosynthError(f"{out}: cannot write the results ({error})") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
