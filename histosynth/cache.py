"""Where histosynth keeps what it can recompute: feature and tile caches, local weights.

One resolver for every app, so that one environment variable moves all caches (e.g. to a
large scratch disk on a cluster) and nothing is ever written inside site-packages.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(override: str | Path | None = None) -> Path:
    """The user cache folder.

    Resolution order: `override` (a `--cache-dir` option), `$HISTOSYNTH_CACHE_DIR`,
    `$XDG_CACHE_HOME/histosynth`, `~/.cache/histosynth`. The folder is not created here.
    """
    if override is not None:
        return Path(override).expanduser()
    explicit = os.environ.get("HISTOSYNTH_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "histosynth"
