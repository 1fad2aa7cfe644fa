"""Orders a rater could compute: what `study audit` tries before it trusts an order to be secret.

A rater knows the study TOML (it goes into the paper's methods), so the seed, the classes, the
sources and, by re-running the seeded sampling on public pools, which tiles were drawn and in
what order they were drawn; they know their own name and may guess their place in the list of
raters. Any order that a seeded shuffle of those reproduces tells them the source of every
position. This module enumerates such orders - the scheme histosynth used before order secrets,
and the obvious variants of seed, base order and random generator - so that the audit can
fail a study whose stored order equals one of them.
"""

from __future__ import annotations

import hashlib
import random
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePath

import numpy as np


@dataclass(frozen=True)
class KnownItem:
    """What a rater can know or reconstruct about a tile, besides its random id."""

    item_id: str
    source: str
    class_name: str
    original_path: str
    drawn: int  # rank in the order `study create` sampled and inserted the tiles


@dataclass(frozen=True)
class Candidate:
    """One derivable order: how it was made, and its permutation of item ids."""

    scheme: str
    permutation: tuple[str, ...]


# Base orders a rater can rebuild without the random item ids (ids are listed too, in case a
# future change leaks them).
BASE_ORDERS: dict[str, Callable[[KnownItem], tuple]] = {
    "class/source/path": lambda i: (i.class_name, i.source, i.original_path),
    "class/source/file name": lambda i: (i.class_name, i.source, PurePath(i.original_path).name),
    "source/class/path": lambda i: (i.source, i.class_name, i.original_path),
    "class/path": lambda i: (i.class_name, i.original_path),
    "sampling order": lambda i: (i.drawn,),
    "item id": lambda i: (i.item_id,),
}


def seed_variants(seed: int, rater: str, index: int) -> dict[str, object]:
    """Seeds a study author might have built from public values (index: 0-based place of the rater)."""
    text = {
        "seed:order:name": f"{seed}:order:{rater}",  # histosynth's scheme before order secrets
        "seed:name": f"{seed}:{rater}",
        "name:seed": f"{rater}:{seed}",
        "seed+name": f"{seed}{rater}",
        "seed-name": f"{seed}-{rater}",
        "seed_name": f"{seed}_{rater}",
        "seed:order": f"{seed}:order",
        "name": rater,
        "seed text": str(seed),
    }
    numbers = {
        "seed": seed,
        "seed+index": seed + index,
        "seed+index+1": seed + index + 1,
        "crc32(seed:name)": zlib.crc32(f"{seed}:{rater}".encode()),
        "sha256(seed:name)": int.from_bytes(hashlib.sha256(f"{seed}:{rater}".encode()).digest()[:8], "big"),
    }
    return {**text, **numbers}


def derivable_orders(
    items: Sequence[KnownItem],
    *,
    seed: int,
    classes: Sequence[str],
    block_by_class: bool,
    rater: str,
    index: int,
) -> Iterator[Candidate]:
    """Every order of first showings that a seeded scheme gives for this rater."""
    for base_name, key in BASE_ORDERS.items():
        base = sorted(items, key=key)
        blocks = (
            [[i.item_id for i in base if i.class_name == class_name] for class_name in classes]
            if block_by_class
            else [[i.item_id for i in base]]
        )
        for seed_name, value in seed_variants(seed, rater, index).items():
            generators: dict[str, Callable[[list[str]], None]] = {"random": random.Random(value).shuffle}
            if isinstance(value, int):
                generators["numpy default_rng"] = np.random.default_rng(value).shuffle
                generators["numpy RandomState"] = np.random.RandomState(value % 2**32).shuffle
            for generator_name, shuffle in generators.items():
                order: list[str] = []
                for block in blocks:
                    block = list(block)
                    shuffle(block)
                    order.extend(block)
                yield Candidate(f"{generator_name}({seed_name}) over {base_name}", tuple(order))
