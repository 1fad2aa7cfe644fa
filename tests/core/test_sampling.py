"""The one seeded sampler: same seed and pool give the same draw, other scopes never move."""

from __future__ import annotations

import numpy as np
import pytest

from histosynth.errors import HistosynthError
from histosynth.sampling import derive_seed, sample_files, scoped_rng

FILES = [f"ADI-{index:04d}.tif" for index in range(500)]


def test_same_seed_and_scope_give_the_same_draw_in_pool_order() -> None:
    first = sample_files(FILES, 20, 2024, "real", "ADI")
    assert first == sample_files(list(FILES), 20, 2024, "real", "ADI")
    assert first == sorted(first) and len(set(first)) == 20
    assert first != sample_files(FILES, 20, 2025, "real", "ADI")


def test_other_scopes_do_not_change_a_draw() -> None:
    """Drawing for another source or class first, or not at all, leaves this scope's tiles alone."""
    alone = sample_files(FILES, 10, 7, "KLF8-DM", "TUM")
    for other in [("real", "TUM"), ("KLF8-DM", "ADI"), ("styleGAN2", "TUM")]:
        sample_files(FILES, 10, 7, *other)
        assert sample_files(FILES, 10, 7, "KLF8-DM", "TUM") == alone
    assert sample_files(FILES, 10, 7, "KLF8-DM", "ADI") != alone


def test_scopes_are_not_confused_by_joining() -> None:
    """('a', 'bc') and ('ab', 'c'), or the string '1' and the integer 1, are different scopes."""
    assert derive_seed(0, "a", "bc") != derive_seed(0, "ab", "c")
    assert derive_seed(0, "ADI", 1) != derive_seed(0, "ADI", "1")
    assert 0 <= derive_seed(2**40, "x") < 2**63


def test_draws_are_uniform() -> None:
    """Brute force: over many seeds every file is drawn about n/N of the time (chi-square bound)."""
    counts = np.zeros(50)
    for seed in range(2000):
        for name in sample_files(list(range(50)), 5, seed, "pool", "class"):
            counts[name] += 1
    expected = 2000 * 5 / 50
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 100, chi2  # 49 degrees of freedom: P(chi2 > 100) < 1e-4


def test_short_pools_and_bad_arguments() -> None:
    assert sample_files(FILES[:3], 10, 0, "x") == FILES[:3]
    with pytest.raises(HistosynthError, match="seed"):
        sample_files(FILES, 1, -1, "x")
    with pytest.raises(HistosynthError, match="sample size"):
        sample_files(FILES, -1, 0, "x")
    assert scoped_rng(3, "a").integers(1 << 30) == scoped_rng(3, "a").integers(1 << 30)
