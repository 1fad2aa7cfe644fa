"""Output folders and caches shared by the evaluators."""

from __future__ import annotations

from pathlib import Path

import pytest

from histosynth.cache import cache_dir
from histosynth.errors import HistosynthError
from histosynth.files import atomic_write_bytes, atomic_write_text, fsync_folder, staged_output


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


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "histosynth.json"
    atomic_write_text(target, "old")
    assert atomic_write_bytes(target, b"new") == target
    assert target.read_bytes() == b"new"
    assert [path.name for path in tmp_path.iterdir()] == ["histosynth.json"]  # no temporary left


def test_atomic_write_failure_keeps_old_file_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "votes.csv"
    target.write_text("old")

    def full_disk(descriptor: int) -> None:  # fails after the temporary file holds the data
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("histosynth.files.os.fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        atomic_write_bytes(target, b"new")
    assert target.read_text() == "old"
    assert [path.name for path in tmp_path.iterdir()] == ["votes.csv"]


def test_atomic_write_into_missing_folder_fails(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        atomic_write_text(tmp_path / "missing" / "file.txt", "x")
    fsync_folder(tmp_path)  # a folder can be flushed


def test_atomic_write_gives_the_mode_open_would(tmp_path: Path) -> None:
    """A generated PNG must be readable by a server running as another user, as with open()."""
    import os
    import stat

    plain = tmp_path / "plain.png"
    plain.write_bytes(b"x")
    atomic = atomic_write_bytes(tmp_path / "atomic.png", b"x")
    assert stat.S_IMODE(atomic.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    os.chmod(atomic, 0o640)
    atomic_write_bytes(atomic, b"y")  # replacing keeps the file's own mode
    assert stat.S_IMODE(atomic.stat().st_mode) == 0o640
