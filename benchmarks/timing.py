"""Timing shared by the benchmarks that compare a call with its baseline in the same run."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_of(function: Callable[[], object], repeats: int) -> float:
    """Fastest of `repeats` runs (the least disturbed by other processes), in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)
