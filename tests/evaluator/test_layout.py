"""The evaluator's house rules, read from the source: no family imports another, no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import evaluator

ROOT = Path(evaluator.__file__).resolve().parent
FAMILIES = ("ratings", "pools", "memorization")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def evaluator_imports() -> dict[str, set[str]]:
    """Each evaluator module and the evaluator modules it imports, anywhere in its body."""
    modules = {module_name(path): path for path in ROOT.rglob("*.py")}
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
        graph[name] = imported - {name, "evaluator"}
    return graph


def family(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in FAMILIES else None


def test_the_layout_is_the_designed_one() -> None:
    graph = evaluator_imports()
    expected = {"evaluator.multiple_testing", "evaluator.ratings.report", "evaluator.pools.features"}
    assert expected | {"evaluator.memorization.audit", "evaluator.memorization.report"} <= set(graph)
    flat = [name for name in graph if name.count(".") == 1 and family(name) is None]
    assert flat == ["evaluator.multiple_testing"], "only shared helpers live beside the families"


def test_no_family_imports_another() -> None:
    crossings = [
        f"{module} imports {target}"
        for module, targets in evaluator_imports().items()
        for target in targets
        if family(target) is not None and family(target) != family(module)
    ]
    assert not crossings


def test_no_import_cycle() -> None:
    graph = evaluator_imports()
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles
