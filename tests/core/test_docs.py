"""Docs that cannot drift: every command of the CLI is shown in the README and has --help."""

from __future__ import annotations

from pathlib import Path

from typer.main import get_command
from typer.testing import CliRunner

from histosynth.cli import app

README = Path(__file__).resolve().parents[2] / "README.md"


def command_paths(group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for name, command in getattr(group, "commands", {}).items():
        if getattr(command, "commands", None):
            paths += command_paths(command, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


def test_every_command_is_in_the_readme() -> None:
    text = README.read_text(encoding="utf-8")
    paths = command_paths(get_command(app))
    assert ("study", "create") in paths and ("rate",) in paths
    missing = [" ".join(path) for path in paths if "histosynth " + " ".join(path) not in text]
    assert not missing, f"README does not show: {missing}"


def test_every_command_has_help() -> None:
    runner = CliRunner()
    for path in command_paths(get_command(app)):
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, path
        assert "Usage" in result.output


def test_cli_reference_is_current() -> None:
    """docs/cli.md is what `python -m histosynth.cli.reference` renders (run `make docs` after a change)."""
    from histosynth.cli.reference import cli_reference

    reference = README.parent / "docs" / "cli.md"
    assert reference.read_text(encoding="utf-8") == cli_reference(), "docs/cli.md is stale: run `make docs`"
