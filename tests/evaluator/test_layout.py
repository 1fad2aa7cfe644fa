"""The evaluator's house rules, read from the source: no family imports another (import cycles
anywhere in the project are checked by tests/core/test_architecture.py)."""

from __future__ import annotations

import importlib
import inspect

import pytest

import evaluator

FAMILIES = ("ratings", "pools", "memorization")


def family(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in FAMILIES else None


def test_the_layout_is_the_designed_one(import_graph) -> None:
    graph = import_graph(evaluator)
    expected = {"evaluator.multiple_testing", "evaluator.ratings.report", "evaluator.pools.features"}
    assert expected | {"evaluator.memorization.audit", "evaluator.memorization.report"} <= set(graph)
    flat = [name for name in graph if name.count(".") == 1 and family(name) is None]
    assert flat == ["evaluator.multiple_testing"], "only shared helpers live beside the families"


def test_no_family_imports_another(import_graph) -> None:
    crossings = [
        f"{module} imports {target}"
        for module, targets in import_graph(evaluator).items()
        for target in targets
        if family(target) is not None and family(target) != family(module)
    ]
    assert not crossings


FRONT_DOORS = [
    ("evaluator.ratings.report", ("evaluate_ratings", "compute_ratings", "write_ratings")),
    ("evaluator.pools.fid", ("evaluate_fid", "compute_fid", "write_fid")),
    ("evaluator.pools.tsne", ("evaluate_tsne", "compute_tsne", "write_tsne")),
    ("evaluator.pools.msssim", ("evaluate_msssim", "compute_msssim", "write_msssim")),
    ("evaluator.memorization.report", ("evaluate_memorization", "write_report")),
    ("evaluator.memorization.audit", ("audit_memorization",)),
]


@pytest.mark.parametrize(("module", "names"), FRONT_DOORS, ids=[module for module, _ in FRONT_DOORS])
def test_front_doors_document_every_argument(module: str, names: tuple[str, ...]) -> None:
    for name in names:
        function = getattr(importlib.import_module(module), name)
        doc = inspect.getdoc(function) or ""
        assert all(section in doc for section in ("Args:", "Returns:", "Raises:")), name
        arguments = doc.split("Args:")[1].split("Returns:")[0]
        undocumented = [p for p in inspect.signature(function).parameters if f"{p}:" not in arguments]
        assert not undocumented, f"{module}.{name} does not document {undocumented}"


@pytest.mark.parametrize("module", ["evaluator.pools.fid", "evaluator.pools.tsne", "evaluator.pools.msssim"])
def test_front_doors_take_one_settings_object(module: str) -> None:
    command = module.rsplit(".", 1)[1]
    parameters = inspect.signature(getattr(importlib.import_module(module), f"evaluate_{command}")).parameters
    assert list(parameters)[-2:] == ["out", "settings"]
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


COMMANDS = {
    "ratings": ("evaluator.ratings.report", "evaluate_ratings", "RatingSettings"),
    "fid": ("evaluator.pools.fid", "evaluate_fid", "FidSettings"),
    "tsne": ("evaluator.pools.tsne", "evaluate_tsne", "TsneSettings"),
    "msssim": ("evaluator.pools.msssim", "evaluate_msssim", "MsssimSettings"),
    "memorization": ("evaluator.memorization.report", "evaluate_memorization", "MemorizationSettings"),
}
# Options that are no parameter of the front door: where the votes come from (the command reads
# them), the repeated `--pool NAME=DIR` (parsed into `pools`), and the old spelling `--native-size`.
NOT_PARAMETERS = {"db", "study", "pool", "native_size"}


@pytest.mark.parametrize("command", COMMANDS)
def test_cli_options_are_named_as_the_python_parameters(command: str) -> None:
    import dataclasses

    from typer.main import get_command

    from histosynth.cli import app

    module_name, function_name, settings_name = COMMANDS[command]
    module = importlib.import_module(module_name)
    settings = getattr(module, settings_name)
    known = {field.name for field in dataclasses.fields(settings)}
    known |= set(inspect.signature(getattr(module, function_name)).parameters)
    options = get_command(app).commands["evaluate"].commands[command].params
    strays = [option.name for option in options if option.name not in known | NOT_PARAMETERS]
    assert not strays, f"evaluate {command}: options without a parameter of the same name: {strays}"
