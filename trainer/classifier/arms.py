"""The experiment's design: training sources by role, the three arms, caps and the validation split.

A source is a named pool (`--train NAME=POOL`). The source named `real` (the votes' and studies'
`REAL_SOURCE`) holds real tiles; every other source is synthetic. The paper's three arms are
built from the sources by role: `real` (the real sources), `synthetic` (every synthetic source)
and `combined` (all of them). Labels follow the test pool's classes, so every arm predicts the
same classes; a source may hold a subset of them, but each arm must cover all of them.

All draws follow the core's seeding rule (`histosynth.sampling.sample_files`): a cap draws
`--cap NAME=N` tiles per class from (seed, source, class), and the validation split holds out
`valid_fraction` of each source's tiles per class from (seed, "validation", source, class).
So the real tiles of the `real` and `combined` arms, and their validation tiles, are the same
for one seed, and each seed draws afresh.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from histosynth.errors import HistosynthError
from histosynth.pools import Pool, read_pool
from histosynth.sampling import sample_files
from histosynth.votes import REAL_SOURCE

ARMS = ("real", "synthetic", "combined")


@dataclass(frozen=True)
class ArmData:
    """One arm's tiles for one seed: files with labels, for training and for validation."""

    arm: str
    seed: int
    sources: list[str]
    train: list[tuple[Path, int]]
    valid: list[tuple[Path, int]]


def parse_arms(text: str | Sequence[str]) -> list[str]:
    """`real,synthetic,combined` (or a list) -> the arms in the given order, checked.

    Raises:
        HistosynthError: an unknown or repeated arm, or none.
    """
    names = [name.strip() for name in (text.split(",") if isinstance(text, str) else text) if name.strip()]
    unknown = [name for name in names if name not in ARMS]
    if not names or unknown:
        raise HistosynthError(f"--arms {text!r}: expected a comma-separated subset of {', '.join(ARMS)}")
    if len(set(names)) != len(names):
        raise HistosynthError(f"--arms {text!r}: an arm is named twice")
    return names


def parse_caps(values: Sequence[str], sources: Mapping[str, Path]) -> dict[str, int]:
    """Repeated `--cap NAME=N` -> {source: tiles per class}.

    Raises:
        HistosynthError: malformed, repeated, not a `--train` source, or N < 1.
    """
    caps: dict[str, int] = {}
    for value in values:
        name, sep, number = value.partition("=")
        if not sep or not number.strip().isdigit():
            raise HistosynthError(f"--cap {value!r}: expected NAME=N (tiles per class)")
        if name not in sources:
            raise HistosynthError(f"--cap {value!r}: no --train source named {name!r}")
        if name in caps:
            raise HistosynthError(f"--cap: source {name!r} given twice")
        if int(number) < 1:
            raise HistosynthError(f"--cap {value!r}: must be at least 1")
        caps[name] = int(number)
    return caps


def arm_sources(arm: str, sources: Sequence[str]) -> list[str]:
    """The sources an arm trains on, in `--train` order.

    Raises:
        HistosynthError: the arm has no source (no `real`, or no synthetic source).
    """
    real = [name for name in sources if name == REAL_SOURCE]
    synthetic = [name for name in sources if name != REAL_SOURCE]
    given = ", ".join(sources)
    if arm in ("real", "combined") and not real:
        raise HistosynthError(f"--arms {arm}: needs a --train source named {REAL_SOURCE!r} (given: {given})")
    if arm in ("synthetic", "combined") and not synthetic:
        raise HistosynthError(
            f"--arms {arm}: needs a synthetic --train source, one not named {REAL_SOURCE!r} (given: {given})"
        )
    return {"real": real, "synthetic": synthetic, "combined": real + synthetic}[arm]


def read_sources(sources: Mapping[str, Path], classes: Sequence[str]) -> dict[str, Pool]:
    """Read every training source, restricted to the test pool's classes.

    Args:
        sources: name -> pool folder, in `--train` order.
        classes: the test pool's classes (label order).

    Raises:
        PoolError: a source is not a pool (see `histosynth.pools.read_pool`).
        HistosynthError: a source holds a class the test pool lacks (the classifier could not
            be scored on it, and its tiles would silently change what the arm learns).
    """
    pools: dict[str, Pool] = {}
    for name, folder in sources.items():
        present = read_pool(folder).classes
        extra = [label for label in present if label not in classes]
        if extra:
            raise HistosynthError(
                f"--train {name}={folder}: class {', '.join(extra)} is not in the test pool "
                f"({', '.join(classes)})"
            )
        pools[name] = read_pool(folder, present)
    return pools


def check_coverage(arm: str, names: Sequence[str], pools: Mapping[str, Pool], test: Pool) -> None:
    """Every test class must have training tiles in the arm.

    Raises:
        HistosynthError: naming the arm, the class and the test pool.
    """
    covered = {label for name in names for label in pools[name].classes}
    missing = [label for label in test.classes if label not in covered]
    if missing:
        raise HistosynthError(
            f"--test {test.root}: class {', '.join(missing)} has no training tiles in arm {arm!r} "
            f"(sources {', '.join(names)}); every arm must cover every test class"
        )


def arm_data(
    arm: str,
    seed: int,
    names: Sequence[str],
    pools: Mapping[str, Pool],
    classes: Sequence[str],
    caps: Mapping[str, int],
    valid_fraction: float,
) -> ArmData:
    """Draw one arm's training and validation tiles for one seed.

    Args:
        arm: the arm's name.
        seed: this repeat's seed.
        names: the arm's sources (`arm_sources`).
        pools: every source's pool (`read_sources`).
        classes: the label order (the test pool's classes).
        caps: tiles per class and source (`parse_caps`); uncapped sources use all.
        valid_fraction: share held out per source and class (at least one tile where a
            class has two or more).

    Returns:
        The arm's files with labels.

    Raises:
        HistosynthError: the validation set would be empty.
    """
    train: list[tuple[Path, int]] = []
    valid: list[tuple[Path, int]] = []
    for name in names:
        for label_name, files in pools[name].files.items():
            label = list(classes).index(label_name)
            drawn = sample_files(files, caps.get(name, len(files)), seed, name, label_name)
            held = round(valid_fraction * len(drawn))
            held = max(held, 1) if len(drawn) >= 2 else 0
            held_out = set(sample_files(drawn, held, seed, "validation", name, label_name)) if held else set()
            valid.extend((path, label) for path in drawn if path in held_out)
            train.extend((path, label) for path in drawn if path not in held_out)
    if not valid:
        raise HistosynthError(f"arm {arm!r}: no validation tiles; every class has a single tile")
    return ArmData(arm=arm, seed=seed, sources=list(names), train=train, valid=valid)
