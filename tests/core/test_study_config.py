"""Study definitions: valid files parse; every mistake is one line naming the file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from histosynth.errors import ConfigError
from histosynth.study_config import load_study_config

VALID = """
[study]
name = "crc-realism"
seed = 2024
images_per_cell = 10
classes = ["ADI", "BACK"]
block_by_class = true
confidence = "6-point"
allow_changes = false
repeats = 5

[sources]
real = "data/NCT-CRC-HE-100K"
"KLF8-DM" = "pools/klf8"
styleGAN2 = "/abs/pools/stylegan2"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_valid_study(tmp_path: Path) -> None:
    config = load_study_config(write(tmp_path, VALID))
    assert config.name == "crc-realism" and config.seed == 2024 and config.images_per_cell == 10
    assert config.classes == ["ADI", "BACK"] and config.confidence == "6-point"
    assert config.allow_changes is False and config.repeats == 5 and config.block_by_class is True
    assert config.generators == ["KLF8-DM", "styleGAN2"]
    assert config.sources["real"] == tmp_path / "data/NCT-CRC-HE-100K"
    assert config.sources["styleGAN2"] == Path("/abs/pools/stylegan2")


def test_defaults(tmp_path: Path) -> None:
    text = '[study]\nname = "s"\nseed = 1\nimages_per_cell = 2\n[sources]\nreal = "r"\ngen = "g"\n'
    config = load_study_config(write(tmp_path, text))
    assert config.classes is None and config.block_by_class and config.allow_changes
    assert config.confidence == "none" and config.repeats == 0 and config.title is None
    titled = load_study_config(write(tmp_path, text.replace("seed = 1", 'seed = 1\ntitle = "Skin study"')))
    assert titled.title == "Skin study" and titled.settings()["title"] == "Skin study"
    assert config.instructions is None and config.settings()["instructions"] is None
    markdown = "Look at the **nuclei**.\n\n- R: real\n- S: synthetic\n"
    instructed = load_study_config(
        write(tmp_path, text.replace("seed = 1", f'seed = 1\ninstructions = """{markdown}"""'))
    )
    assert instructed.instructions == markdown and instructed.settings()["instructions"] == markdown


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("seed = 2024", 'seed = "x"', "study.seed must be int"),
        ("seed = 2024", "seed = true", "study.seed must be int"),
        ("seed = 2024\n", "", "missing field study.seed"),
        ("images_per_cell = 10", "images_per_cell = 0", "images_per_cell must be at least 1"),
        ("repeats = 5", "repeats = -1", "repeats must not be negative"),
        ('confidence = "6-point"', 'confidence = "5-point"', "study.confidence must be one of"),
        ('classes = ["ADI", "BACK"]', 'classes = ["ADI", "ADI"]', "lists ADI twice"),
        ('classes = ["ADI", "BACK"]', "classes = []", "study.classes must be a non-empty list"),
        ('name = "crc-realism"', 'name = "crc realism!"', "study.name"),
        ("repeats = 5", "repeats = 5\nshuffle = true", "unknown field study.shuffle"),
        ('real = "data/NCT-CRC-HE-100K"\n', "", "sources.real is missing"),
        ('styleGAN2 = "/abs/pools/stylegan2"', 'klf8-dm = "other"', "duplicate source name"),
        ('"KLF8-DM" = "pools/klf8"', '"KLF8-DM" = 3', "sources.KLF8-DM must be a folder path"),
        ("[sources]", "[sauces]", "unknown table [sauces]"),
        ("repeats = 5", 'repeats = 5\ntitle = ""', "study.title must be 1-100 printable characters"),
        ("repeats = 5", 'repeats = 5\ntitle = "a\\nb"', "study.title must be 1-100 printable characters"),
        ("repeats = 5", f'repeats = 5\ntitle = "{"x" * 101}"', "study.title must be 1-100"),
        ("repeats = 5", "repeats = 5\ntitle = 3", "study.title must be str"),
        ("repeats = 5", 'repeats = 5\ninstructions = "  "', "study.instructions must be 1-20000 characters"),
        ("repeats = 5", "repeats = 5\ninstructions = 1", "study.instructions must be str"),
    ],
)
def test_bad_fields(tmp_path: Path, old: str, new: str, message: str) -> None:
    assert old in VALID
    path = write(tmp_path, VALID.replace(old, new, 1))
    with pytest.raises(ConfigError) as raised:
        load_study_config(path)
    text = str(raised.value)
    assert message in text and str(path) in text and "\n" not in text


def test_malformed_toml_and_duplicate_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="malformed TOML"):
        load_study_config(write(tmp_path, "[study\nname = 1"))
    duplicate = VALID.replace('styleGAN2 = "/abs/pools/stylegan2"', '"KLF8-DM" = "again"')
    with pytest.raises(ConfigError, match="malformed TOML"):
        load_study_config(write(tmp_path, duplicate))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_study_config(tmp_path / "nope.toml")


def test_shipped_study_definitions_parse() -> None:
    root = Path(__file__).resolve().parents[2] / "studies"
    paper = load_study_config(root / "niehues2024.toml")
    assert paper.images_per_cell == 10 and len(paper.classes) == 9
    assert paper.generators == ["KLF8-DM", "VQF8-DM", "SD-v1.4-FT", "styleGAN2"]
    assert paper.images_per_cell * len(paper.classes) * len(paper.sources) == 450
    assert load_study_config(root / "demo.toml").name == "demo"
