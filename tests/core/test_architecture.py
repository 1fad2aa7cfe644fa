"""The house rules of DESIGN.md, checked on the source: who may import whom, and no cycles.

The apps talk only through files, so `trainer`, `evaluator` and `rater_app` never import each
other; the core imports no app except in `histosynth/cli/`, inside its commands; and no module
takes part in an import cycle, imports inside functions included (they are how the CLI stays
fast; a cycle through one is still two modules that cannot be read one without the other).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("histosynth", "trainer", "evaluator", "rater_app")
APPS = ("trainer", "evaluator", "rater_app")


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _imports(path: Path, module: str, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against this module's package
                base = module.split(".")[: -node.level if path.name != "__init__.py" else None]
                if path.name == "__init__.py" and node.level > 1:
                    base = module.split(".")[: -(node.level - 1)]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def test_apps_never_import_each_other_and_the_core_imports_no_app() -> None:
    offences = []
    for module, path in _modules().items():
        owner = module.split(".")[0]
        for imported in _imports(path, module, top_level_only=False):
            target = imported.split(".")[0]
            if owner in APPS and target in APPS and target != owner:
                offences.append(f"{module} imports {imported}")
            if owner == "histosynth" and target in APPS and not module.startswith("histosynth.cli"):
                offences.append(f"{module} imports {imported}")
    assert not offences, offences


def test_cli_imports_apps_only_inside_commands() -> None:
    """`histosynth study ...` must start without importing torch: no app import at module level."""
    offences = [
        f"{module} imports {imported}"
        for module, path in _modules().items()
        if module.startswith("histosynth.cli")
        for imported in _imports(path, module, top_level_only=True)
        if imported.split(".")[0] in APPS
    ]
    assert not offences, offences


def test_no_import_cycle() -> None:
    """No strongly connected component of more than one module in the module-level import graph."""
    modules = _modules()
    graph = {
        module: {_resolve(imported, modules) for imported in _imports(path, module, top_level_only=False)}
        - {None, module}
        for module, path in modules.items()
    }
    cycles = [sorted(component) for component in _components(graph) if len(component) > 1]
    assert not cycles, cycles


def _resolve(imported: str, modules: dict[str, Path]) -> str | None:
    """The module an import names: `from a.b import c` is module a.b.c if that exists, else a.b."""
    return imported if imported in modules else (imported.rpartition(".")[0] or None)


def _components(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in graph:
                continue
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components
