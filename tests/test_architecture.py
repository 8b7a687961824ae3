"""The import directions of README's Architecture section, read from the source with `ast`:

    schemas/   imports no stage
    runtime/   imports nothing of the project (how a process uses its machine)
    pipeline/  schemas only (knows nothing of the student)
    models/    schemas only
    trainer/   models, schemas
    eval/      models, schemas (never the trainer)
    recipes/   anything: the one place that crosses the stages

and no import cycle between the project's modules (an import inside a function counts too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

FORBIDDEN = {
    "schemas": {"runtime", "pipeline", "models", "trainer", "eval", "recipes"},
    "runtime": {"schemas", "pipeline", "models", "trainer", "eval", "recipes"},
    "pipeline": {"models", "trainer", "eval", "recipes"},
    "models": {"pipeline", "trainer", "eval", "recipes"},
    "trainer": {"pipeline", "eval", "recipes"},
    "eval": {"pipeline", "trainer", "recipes"},
    "recipes": set(),
}


def project_modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file, for every module of the packages above."""
    modules = {}
    for package in FORBIDDEN:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def imported_names(path: Path, module: str) -> set[str]:
    """Every dotted name `path` imports, at any depth (relative imports resolved); for
    `from a import b`, both `a` and `a.b` (b may be a submodule)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parent, *([base] if base else [])])
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    modules = project_modules(root)
    graph = {}
    for module, path in modules.items():
        graph[module] = {
            name for name in imported_names(path, module) if name in modules and name != module
        }
    return graph


def direction_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in sorted(graph.items()):
        stage = module.split(".")[0]
        for target in sorted(targets):
            if target.split(".")[0] in FORBIDDEN[stage]:
                bad.append(f"{module} imports {target}")
    return bad


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_stages_import_only_in_the_documented_directions():
    graph = import_graph(REPO)
    assert {m.split(".")[0] for m in graph} == set(FORBIDDEN)  # every package was read
    assert direction_violations(graph) == []


def test_there_is_no_import_cycle_between_modules():
    assert import_cycles(import_graph(REPO)) == []


def test_recipes_alone_import_every_stage():
    graph = import_graph(REPO)
    reached = {t.split(".")[0] for m, ts in graph.items() if m.startswith("recipes") for t in ts}
    assert {"pipeline", "models", "eval", "schemas"} <= reached


@pytest.fixture
def bad_tree(tmp_path: Path) -> Path:
    """A project whose pipeline imports the trainer, lazily, and whose models form a cycle."""
    files = {
        "schemas/__init__.py": "",
        "pipeline/__init__.py": "",
        "pipeline/run.py": "def main():\n    from trainer.main import main as train\n",
        "models/__init__.py": "",
        "models/a.py": "from . import b\n",
        "models/b.py": "from models.a import thing\n",
        "trainer/__init__.py": "",
        "trainer/main.py": "import models.a\n",
        "eval/__init__.py": "",
        "recipes/__init__.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_the_checks_catch_a_wrong_direction_and_a_cycle(bad_tree: Path):
    graph = import_graph(bad_tree)
    assert direction_violations(graph) == ["pipeline.run imports trainer.main"]
    assert import_cycles(graph) == [["models.a", "models.b"]]
