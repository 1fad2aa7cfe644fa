"""Fixtures shared by tests of every app and the core: tiny pools, and the CLI as a user runs it.

Pools are made of small random images written in the formats real data sets use. The rating
app's own fixtures (study files, a live server, a browser) are in tests/rater_app/conftest.py.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import io
import logging
import os
import re
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image


def _share_the_cores_between_workers() -> None:
    """Give each xdist worker, and every process it starts, its share of the cores.

    torch sizes its OpenMP pool to all cores in every process; two workers on two cores then run
    four spinning threads, and each waits on the other's. Set before any test module imports
    torch; an explicit OMP_NUM_THREADS wins.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))


_share_the_cores_between_workers()


def write_tile(path: Path, rng: np.random.Generator, size: int = 64) -> Path:
    """A random RGB tile (smooth enough to compress like tissue), saved in the suffix's format."""
    base = rng.integers(0, 255, size=(size // 8, size // 8, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize((size, size), Image.Resampling.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def build_pool(
    root: Path,
    classes: tuple[str, ...] = ("ADI", "TUM"),
    per_class: int = 4,
    suffix: str = ".png",
    stem: str | None = None,
    seed: int = 0,
) -> Path:
    """A pool of random tiles at `root` (`root.name` seeds them): `<CLASS>/<stem>-<CLASS>-<i><suffix>`."""
    name = root.name
    rng = np.random.default_rng(zlib.crc32(f"{name}:{seed}".encode()))
    for class_name in classes:
        for index in range(per_class):
            write_tile(root / class_name / f"{stem or name}-{class_name}-{index:03d}{suffix}", rng)
    return root


@pytest.fixture
def make_pool(tmp_path: Path) -> Callable[..., Path]:
    """Factory: make_pool(name, classes, per_class, suffix=".png", stem=None) -> pool folder."""

    def make(name: str, *args, **kwargs) -> Path:
        return build_pool(tmp_path / "pools" / name, *args, **kwargs)

    return make


def histosynth(
    *args: str | Path, cwd: Path | None = None, check: bool = False
) -> subprocess.CompletedProcess:
    """Run `histosynth ARGS` through the console script's `main`, in this process.

    The caller sees what a user sees: the exit code, stdout, and on stderr the CLI's log lines
    (its format, from INFO up) and its one-line errors. In this process a call costs neither an
    interpreter start nor a second import of torch and diffusers (6-8 s of CPU for a trainer
    command). `histosynth_process` runs the installed script in a process of its own, for the
    tests that need one (a timeout, a signal, a command that could start a server).
    """
    from histosynth import cli

    stdout, stderr = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(stderr)
    handler.setFormatter(logging.Formatter(cli.LOG_FORMAT))
    root = logging.getLogger()
    saved_handlers, saved_level, saved_argv = root.handlers[:], root.level, sys.argv
    root.handlers[:] = [handler]  # pytest's own handlers would otherwise keep the CLI's lines
    root.setLevel(logging.INFO)
    sys.argv = argv = ["histosynth", *map(str, args)]
    returncode: int | str | None = 0
    try:
        with (
            contextlib.redirect_stdout(stdout),
            contextlib.redirect_stderr(stderr),
            contextlib.chdir(cwd or Path.cwd()),
        ):
            try:
                cli.main()
            except SystemExit as stop:
                returncode = stop.code
    finally:
        root.handlers[:], sys.argv = saved_handlers, saved_argv
        root.setLevel(saved_level)
    if isinstance(returncode, str):  # sys.exit("message"): Python prints it and exits 1
        stderr.write(f"{returncode}\n")
        returncode = 1
    result = subprocess.CompletedProcess(argv, returncode or 0, stdout.getvalue(), stderr.getvalue())
    if check:
        result.check_returncode()
    return result


def histosynth_process(
    *args: str | Path, cwd: Path | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    """Run the installed CLI in a process of its own, exactly as a user would."""
    command = [sys.executable, "-m", "histosynth", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=timeout)


def package_imports(package: ModuleType) -> dict[str, set[str]]:
    """Each module of `package` and the modules of `package` it imports, anywhere in its body.

    The layout tests of the evaluator and the trainer read their house rules from this graph.
    """
    root = Path(package.__file__).resolve().parent

    def module_name(path: Path) -> str:
        parts = path.relative_to(root.parent).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = {module_name(path): path for path in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                candidates = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            imported |= {candidate for candidate in candidates if candidate in modules}
        graph[name] = imported - {name, package.__name__}
    return graph


@pytest.fixture(scope="session")
def import_graph() -> Callable[[ModuleType], dict[str, set[str]]]:
    """`package_imports`, for the layout tests."""
    return package_imports


# `make test-fast` (README, Development) leaves out what makes a test slow: a real browser, another
# process (the CLI as a user runs it, a live server, torchrun) and training a model. Each test is
# sorted here, once, from the fixtures it uses and the calls in its source (and, for training, in
# its module: trained module fixtures count), so a new test is classified without anyone
# remembering to mark it; `make test` runs them all.
BROWSER_FIXTURES = {"browser"}
PROCESS_FIXTURES = {"rating_server", "cli"}
PROCESS_CALLS = re.compile(r"\bhistosynth\(|\bsubprocess\.|\bPopen\(|\btorchrun\b")
TRAINING_FIXTURES = {"tiny_models"}
TRAINING_CALLS = re.compile(r"\btrain_(autoencoder|ldm|stylegan2|sd_finetune|classifier)\(")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    module_sources: dict[Path, str] = {}
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        function = getattr(item, "function", None)
        source = inspect.getsource(function) if function is not None else ""
        path = Path(str(item.fspath))
        if path not in module_sources:
            module_sources[path] = path.read_text(encoding="utf-8")
        if fixtures & BROWSER_FIXTURES:
            item.add_marker(pytest.mark.browser)
        if fixtures & PROCESS_FIXTURES or PROCESS_CALLS.search(source):
            item.add_marker(pytest.mark.processes)
        if fixtures & TRAINING_FIXTURES or TRAINING_CALLS.search(module_sources[path]):
            item.add_marker(pytest.mark.training)
