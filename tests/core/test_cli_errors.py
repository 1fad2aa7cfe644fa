"""Whatever goes wrong, the command line says it in one line and exits non-zero; a traceback only
when asked for with HISTOSYNTH_DEBUG=1."""

from __future__ import annotations

import sys

import pytest


def run(monkeypatch: pytest.MonkeyPatch, capsys, failure: BaseException, debug: str | None = None):
    """Run `histosynth study list` with a command body that raises `failure`; (exit code, stderr)."""
    from histosynth import cli

    def boom(*args, **kwargs):
        raise failure

    monkeypatch.setattr(cli, "app", boom)
    monkeypatch.setattr(sys, "argv", ["histosynth", "study", "list"])
    if debug is None:
        monkeypatch.delenv(cli.DEBUG_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(cli.DEBUG_VARIABLE, debug)
    with pytest.raises(SystemExit) as stop:
        cli.main()
    return stop.value.code, capsys.readouterr().err


def test_an_unexpected_error_is_one_line_with_the_way_to_the_traceback(monkeypatch, capsys) -> None:
    code, err = run(monkeypatch, capsys, RuntimeError("self.dim() cannot be 0\nto view Long as Byte"))
    assert code == 1
    expected = "error: RuntimeError: self.dim() cannot be 0 to view Long as Byte"
    assert err.splitlines() == [f"{expected} (set HISTOSYNTH_DEBUG=1 for the traceback)"]
    code, err = run(monkeypatch, capsys, KeyError("x"), debug="0")
    assert code == 1 and "Traceback" not in err and "KeyError" in err


def test_histosynth_debug_shows_the_traceback(monkeypatch, capsys) -> None:
    from histosynth import cli

    monkeypatch.setattr(cli, "app", lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    monkeypatch.setenv(cli.DEBUG_VARIABLE, "1")
    with pytest.raises(RuntimeError, match="boom"):  # re-raised: Python prints the whole traceback
        cli.main()


def test_ctrl_c_exits_130_without_a_traceback(monkeypatch, capsys) -> None:
    code, err = run(monkeypatch, capsys, KeyboardInterrupt())
    assert code == 130 and err.strip() == "interrupted"
