"""Fixtures shared by the evaluator tests of every family."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch) -> Callable[..., int]:
    """run_cli(*args) runs `histosynth ARGS` in this process, as the console script does, and
    returns its exit code; what it prints stays readable through `capsys`."""
    from histosynth import cli

    def run(*args: str | Path) -> int:
        monkeypatch.setattr(sys, "argv", ["histosynth", *map(str, args)])
        try:
            cli.main()
        except SystemExit as stop:
            return int(stop.code or 0)
        return 0

    return run
