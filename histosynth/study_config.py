"""Study definitions: the TOML file a researcher writes to describe a blinded rating study.

Validation happens here, before any pool is touched, so that a typo in a key or a value
is reported as one line naming the file and the field, not as a traceback halfway through
copying images.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from histosynth.errors import ConfigError
from histosynth.votes import REAL_SOURCE

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

CONFIDENCE_SCALES = ("none", "6-point")
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_STUDY_KEYS = {
    "name",
    "seed",
    "images_per_cell",
    "classes",
    "block_by_class",
    "confidence",
    "allow_changes",
    "repeats",
    "title",
    "instructions",
}
_TITLE_MAX = 100
_INSTRUCTIONS_MAX = 20_000


@dataclass(frozen=True)
class StudyConfig:
    """A validated study definition; `sources` maps source name to its pool folder."""

    name: str
    seed: int
    images_per_cell: int
    sources: dict[str, Path]
    classes: list[str] | None = None
    block_by_class: bool = True
    confidence: str = "none"
    allow_changes: bool = True
    repeats: int = 0
    title: str | None = None  # shown on the login page; by default a neutral title, not the name
    instructions: str | None = None  # Markdown shown to raters before the first tile and on demand

    @property
    def generators(self) -> list[str]:
        """Source names other than the real one, in the order the file lists them."""
        return [name for name in self.sources if name != REAL_SOURCE]

    def settings(self) -> dict[str, Any]:
        """The rating settings that the app needs, as stored with the study."""
        return {
            "block_by_class": self.block_by_class,
            "confidence": self.confidence,
            "allow_changes": self.allow_changes,
            "repeats": self.repeats,
            "images_per_cell": self.images_per_cell,
            "title": self.title,
            "instructions": self.instructions,
        }


def load_study_config(path: str | Path) -> StudyConfig:
    """Read and validate a study TOML file; relative source paths resolve against it.

    Raises:
        ConfigError: the file is missing or malformed, or a field is unknown, missing or
            of the wrong type; the message names the file and the field.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: study file does not exist")
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: malformed TOML ({error})") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not a UTF-8 text file") from error
    return parse_study_config(document, base_dir=path.parent, origin=str(path))


def parse_study_config(
    document: Mapping[str, Any], base_dir: str | Path = ".", origin: str = "<study>"
) -> StudyConfig:
    """Validate a parsed study document (the TOML's tables as dicts)."""
    unknown_tables = sorted(set(document) - {"study", "sources"})
    if unknown_tables:
        raise ConfigError(f"{origin}: unknown table [{unknown_tables[0]}] (expected [study], [sources])")
    study = _table(document, "study", origin)
    sources = _table(document, "sources", origin)
    unknown = sorted(set(study) - _STUDY_KEYS)
    if unknown:
        raise ConfigError(f"{origin}: unknown field study.{unknown[0]}")

    name = _field(study, "name", str, origin)
    if not _NAME_PATTERN.match(name):
        raise ConfigError(f"{origin}: study.name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    seed = _field(study, "seed", int, origin)
    images_per_cell = _field(study, "images_per_cell", int, origin)
    if images_per_cell < 1:
        raise ConfigError(f"{origin}: study.images_per_cell must be at least 1")
    repeats = _field(study, "repeats", int, origin, default=0)
    if repeats < 0:
        raise ConfigError(f"{origin}: study.repeats must not be negative")
    confidence = _field(study, "confidence", str, origin, default="none")
    if confidence not in CONFIDENCE_SCALES:
        raise ConfigError(f"{origin}: study.confidence must be one of {', '.join(CONFIDENCE_SCALES)}")
    classes = _classes(study, origin)
    title = _field(study, "title", str, origin, default=None)
    if title is not None and not (0 < len(title.strip()) <= _TITLE_MAX and title.isprintable()):
        raise ConfigError(f"{origin}: study.title must be 1-{_TITLE_MAX} printable characters")
    instructions = _field(study, "instructions", str, origin, default=None)
    if instructions is not None and not 0 < len(instructions.strip()) <= _INSTRUCTIONS_MAX:
        raise ConfigError(f"{origin}: study.instructions must be 1-{_INSTRUCTIONS_MAX} characters (Markdown)")
    return StudyConfig(
        name=name,
        seed=seed,
        images_per_cell=images_per_cell,
        sources=_sources(sources, Path(base_dir), origin),
        classes=classes,
        block_by_class=_field(study, "block_by_class", bool, origin, default=True),
        confidence=confidence,
        allow_changes=_field(study, "allow_changes", bool, origin, default=True),
        repeats=repeats,
        title=title,
        instructions=instructions,
    )


def _table(document: Mapping[str, Any], key: str, origin: str) -> Mapping[str, Any]:
    if key not in document:
        raise ConfigError(f"{origin}: missing table [{key}]")
    table = document[key]
    if not isinstance(table, Mapping):
        raise ConfigError(f"{origin}: [{key}] must be a table")
    return table


_MISSING = object()


def _field(table: Mapping[str, Any], key: str, kind: type, origin: str, default: Any = _MISSING) -> Any:
    if key not in table:
        if default is _MISSING:
            raise ConfigError(f"{origin}: missing field study.{key}")
        return default
    value = table[key]
    # bool is a subclass of int: a seed of `true` is a typo, not the number 1.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{origin}: study.{key} must be {kind.__name__}, got {value!r}")
    return value


def _classes(study: Mapping[str, Any], origin: str) -> list[str] | None:
    if "classes" not in study:
        return None
    classes = study["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        raise ConfigError(f"{origin}: study.classes must be a non-empty list of class names")
    duplicates = sorted({c for c in classes if classes.count(c) > 1})
    if duplicates:
        raise ConfigError(f"{origin}: study.classes lists {duplicates[0]} twice")
    return list(classes)


def _sources(sources: Mapping[str, Any], base_dir: Path, origin: str) -> dict[str, Path]:
    if REAL_SOURCE not in sources:
        raise ConfigError(f"{origin}: sources.real is missing (the pool of real tiles)")
    if len(sources) < 2:
        raise ConfigError(f"{origin}: [sources] needs at least one generator besides real")
    seen: dict[str, str] = {}
    resolved: dict[str, Path] = {}
    for name, folder in sources.items():
        if not name.strip() or any(ch in name for ch in ',"\n\r\t'):
            raise ConfigError(f'{origin}: source name {name!r} is empty or has , " or whitespace')
        if name.lower() in seen:
            raise ConfigError(f"{origin}: duplicate source name {name!r} (also {seen[name.lower()]!r})")
        seen[name.lower()] = name
        if not isinstance(folder, str) or not folder:
            raise ConfigError(f"{origin}: sources.{name} must be a folder path")
        path = Path(folder).expanduser()
        resolved[name] = path if path.is_absolute() else (base_dir / path)
    return resolved
