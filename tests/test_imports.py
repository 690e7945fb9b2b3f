"""Imports point one way: stage3_k8s -> stage2_cluster -> shared, and stage1_dev -> shared;
and a test module imports the toolkit (tests/helpers/), never another test module.

The modules' own import statements are read (not executed), every one that runs at run
time: at the top, inside functions, anywhere but under `if TYPE_CHECKING:`. There, for
type hints only, one circle is allowed: a socket and its channels really know each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers.paths import ROOT

# What each package may import from the project, itself included.
MAY_IMPORT = {
    "shared": {"shared"},
    "stage1_dev": {"stage1_dev", "shared"},
    "stage2_cluster": {"stage2_cluster", "shared"},
    "stage3_k8s": {"stage3_k8s", "stage2_cluster", "shared"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(path: Path, name: str, *, type_checking: bool = False) -> set[str]:
    """The project modules `path` imports when it runs (and, with `type_checking`, for its type hints)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node.test) and not type_checking:
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            # `from shared import app` imports the module shared.app.
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def project_graph(*, type_checking: bool = False) -> dict[str, set[str]]:
    files = {module_name(path): path for package in MAY_IMPORT for path in (ROOT / package).rglob("*.py")}
    return {
        name: {
            imported
            for imported in runtime_imports(path, name, type_checking=type_checking)
            if imported in files and imported != name
        }
        for name, path in files.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := walk(node)):
            return cycle
    return None


def test_the_graph_sees_the_stage_imports_it_is_about() -> None:
    graph = project_graph()
    assert "stage2_cluster.node" in graph["stage3_k8s.node"]
    assert "shared.server" in graph["stage1_dev.__main__"]


def test_no_runtime_import_cycle() -> None:
    assert find_cycle(project_graph()) is None


def test_the_only_type_level_circle_is_a_socket_and_its_channels() -> None:
    graph = project_graph(type_checking=True)
    assert "shared.socket" in graph["shared.channel"] and "shared.channel" in graph["shared.socket"]
    del graph["shared.channel"]
    assert find_cycle(graph | {"shared.channel": set()}) is None


def test_a_cycle_is_found_when_there_is_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_no_import_from_a_higher_or_sibling_stage(package: str) -> None:
    wrong = sorted(
        f"{name} imports {imported}"
        for name, imports in project_graph().items()
        if name.split(".")[0] == package
        for imported in imports
        if imported.split(".")[0] not in MAY_IMPORT[package]
    )
    assert wrong == []


# Inside stage 2 the cluster's modules are layered: the lines and the registry know nothing of
# the rest, membership and the handshake reach the registry through its Protocol (a type hint
# only), and only node.py, which builds them all, imports them all.
STAGE2_FLOORS = {
    "stage2_cluster.lines": set(),
    "stage2_cluster.settings": set(),
    "stage2_cluster.registry": set(),
    "stage2_cluster.broker": {"stage2_cluster.lines", "stage2_cluster.settings"},
    "stage2_cluster.membership": {"stage2_cluster.lines", "stage2_cluster.broker"},
    "stage2_cluster.handshake": {"stage2_cluster.lines"},
}


@pytest.mark.parametrize("module", sorted(STAGE2_FLOORS))
def test_each_cluster_module_imports_only_the_layers_below_it(module: str) -> None:
    imports = {name for name in project_graph()[module] if name.startswith("stage2_cluster.")}
    assert imports <= STAGE2_FLOORS[module]


# The tests themselves: what they share lives in tests/helpers/ ---------------------------------


def imported_test_modules(path: Path, name: str) -> list[str]:
    """The test modules (`test_*`) that `path`, the module `name`, imports."""
    return sorted(
        imported
        for imported in runtime_imports(path, name)
        if imported != name and any(part.startswith("test_") for part in imported.split("."))
    )


def test_no_test_module_imports_another() -> None:
    importers = [*(ROOT / "tests").glob("*.py"), *(ROOT / "tests" / "helpers").glob("*.py")]
    wrong = {
        module_name(path): found for path in importers if (found := imported_test_modules(path, module_name(path)))
    }
    assert wrong == {}


def test_an_import_of_a_test_module_is_found_in_every_form(tmp_path: Path) -> None:
    module = tmp_path / "test_fake.py"
    module.write_text(
        "from tests.test_one import record\n"
        "from tests import test_two as two\n"
        "from . import test_three\n"
        "def later():\n"
        "    import tests.test_four\n"
    )
    found = imported_test_modules(module, "tests.test_fake")
    assert {"tests.test_one", "tests.test_two", "tests.test_three", "tests.test_four"} <= set(found)
