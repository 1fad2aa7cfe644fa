"""Output folders and caches shared by the evaluators."""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluator.outputs import staged_output
from histosynth.cache import cache_dir
from histosynth.errors import HistosynthError


def test_publishes_and_removes_stale_owned_files(tmp_path: Path) -> None:
    out = tmp_path / "results"
    with staged_output(out, owned=["a.csv", "b.csv"]) as staging:
        (staging / "a.csv").write_text("1")
        (staging / "b.csv").write_text("2")
    (out / "notes.txt").write_text("mine")
    with staged_output(out, owned=["a.csv", "b.csv"]) as staging:
        (staging / "a.csv").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == ["a.csv", "notes.txt"]
    assert (out / "a.csv").read_text() == "3"
    assert [p.name for p in tmp_path.iterdir()] == ["results"]  # no staging folder left


def test_failure_leaves_the_folder_as_it_was(tmp_path: Path) -> None:
    out = tmp_path / "results"
    with pytest.raises(RuntimeError), staged_output(out, owned=["a.csv"]) as staging:
        (staging / "a.csv").write_text("half")
        raise RuntimeError("plot failed")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(HistosynthError, match="not a folder"), staged_output(tmp_path / "file"):
        pass


def test_cache_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HISTOSYNTH_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "histosynth"
    monkeypatch.setenv("HISTOSYNTH_CACHE_DIR", str(tmp_path / "explicit"))
    assert cache_dir() == tmp_path / "explicit"
    assert cache_dir(tmp_path / "option") == tmp_path / "option"
    monkeypatch.delenv("HISTOSYNTH_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "histosynth"
