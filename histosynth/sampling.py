"""Seeded sampling that stays put: the one rule by which every app draws tiles or noise.

The rule: a draw is a pure function of (seed, scope), where the scope names what is drawn from,
e.g. `("KLF8-DM", "ADI")` for the tiles of one class of one source, or `("ADI", 17)` for the noise
of generated image 17 of class ADI. So the same seed and the same pool give the same tiles;
adding a source, a class or an image changes no other scope's draw; and the order in which
scopes are visited (threads, batches, resumed runs) never matters.

A scope is hashed with SHA-256 (not Python's `hash`, which changes between processes) into the
entropy of a numpy `SeedSequence`; torch generators take the 63-bit `derive_seed`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from histosynth.errors import HistosynthError

T = TypeVar("T")


def scope_entropy(seed: int, *scope: object) -> list[int]:
    """The 32-bit words that seed a generator for (seed, scope); scope parts are str or int."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise HistosynthError(f"seed {seed!r}: must be a non-negative integer")
    text = "\x1f".join(f"{type(part).__name__}:{part}" for part in scope)
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    return [int(seed) & 0xFFFFFFFF, int(seed) >> 32, *words]


def scoped_rng(seed: int, *scope: object) -> np.random.Generator:
    """A numpy generator for (seed, scope), independent of every other scope."""
    return np.random.default_rng(np.random.SeedSequence(scope_entropy(seed, *scope)))


def derive_seed(seed: int, *scope: object) -> int:
    """A 63-bit integer seed for (seed, scope), for `torch.Generator().manual_seed`."""
    state = np.random.SeedSequence(scope_entropy(seed, *scope)).generate_state(2, dtype=np.uint32)
    return (int(state[0]) | (int(state[1]) << 32)) & ((1 << 63) - 1)


def sample_files(items: Sequence[T], n: int, seed: int, *scope: object) -> list[T]:
    """`n` of `items` drawn without replacement for (seed, scope), kept in their original order.

    Args:
        items: the candidates in a stable order (pools list files sorted by name).
        n: how many to draw; all of them, in order, when there are at most `n`.
        seed: the study's or the command's seed.
        scope: what the items are, e.g. (source, class), so other scopes keep their draws.

    Returns:
        The drawn items. Callers that need exactly `n` check the length themselves and say
        which folder is short.
    """
    if n < 0:
        raise HistosynthError(f"sample size {n}: must not be negative")
    if len(items) <= n:
        return list(items)
    picked = scoped_rng(seed, *scope).choice(len(items), n, replace=False)
    return [items[index] for index in sorted(picked.tolist())]
