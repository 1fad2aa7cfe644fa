"""Progress bars follow one rule: the option when given, else whether stderr is a terminal."""

from __future__ import annotations

import io

import pytest

from histosynth.progress import progress_bar, progress_enabled


def test_flag_wins_and_default_follows_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    assert progress_enabled(True) and not progress_enabled(False)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert not progress_enabled(None)


def test_disabled_bar_accepts_fields_and_draws_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with progress_bar(False, fields=("loss",)) as bar:
        task = bar.add_task("train", total=3, loss=float("nan"))
        bar.update(task, advance=1, loss=0.25)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_enabled_bar_shows_the_field_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    with progress_bar(True, fields=("loss",), transient=False) as bar:
        task = bar.add_task("train", total=2, loss=float("nan"))
        bar.update(task, advance=2, loss=0.125)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "loss 0.125" in captured.err
