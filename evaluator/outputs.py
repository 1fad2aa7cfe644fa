"""Writing an evaluator's output folder all or nothing, without leftovers of earlier runs.

Every `evaluate` command computes its results first, then writes its files into a private
staging folder beside `out`, and only then moves them in. A failure while writing leaves
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
