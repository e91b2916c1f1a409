"""The package's structure: which modules may depend on which (parsed with ``ast``; of the
package only the generators' registry is imported, for the names of their modules).

An edge ``a -> b`` is any import of ``ptycho_torch.b`` anywhere in ``ptycho_torch/a.py``: at
module level, inside functions (lazy imports are still dependencies: they run whenever the
function does) and under ``if TYPE_CHECKING``. ``ptycho_torch/__init__.py`` is left out
(every module's parent package; it imports nothing). "Depends on" follows the edges
transitively.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ptycho_torch.generators import GENERATORS

PACKAGE = Path(__file__).resolve().parents[1] / "ptycho_torch"
# scoring, stitching and the physics know nothing of the network; the config/payload and data
# layers neither
NETWORK_FREE = ("physics", "likelihood", "stitch", "quality", "metrics", "config_factory",
                "config", "dataset", "cxi", "npz", "photon_scale", "data")
# the network (the physics wrapper and the generators' modules: the registry,
# ptycho_torch/generators.py, names them as text and imports them only when asked) and the
# steps that run it
NETWORK = ("model", "train", "infer") + tuple(target.split(":")[0].split(".")[-1]
                                              for target in GENERATORS.values())


def _imported(node: ast.AST, modules: frozenset[str]) -> set[str]:
    """The package modules one import statement names (``from ptycho_torch import a``,
    ``from ptycho_torch.a import x``, ``import ptycho_torch.a``)."""
    if isinstance(node, ast.ImportFrom) and node.level:
        raise AssertionError(f"relative import at line {node.lineno}: use ptycho_torch.<module>")
    if isinstance(node, ast.ImportFrom) and node.module == "ptycho_torch":
        return {a.name for a in node.names if a.name in modules}
    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ptycho_torch."):
        return {node.module.split(".")[1]}
    if isinstance(node, ast.Import):
        return {a.name.split(".")[1] for a in node.names if a.name.startswith("ptycho_torch.")}
    return set()


def import_graph() -> dict[str, set[str]]:
    """Module name -> the package modules it imports anywhere in its file."""
    files = {p.stem: p for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    modules = frozenset(files)
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[name] = set().union(*(_imported(n, modules) for n in ast.walk(tree))) - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle ``[a, b, ..., a]`` of ``graph``, or [] when it has none (depth-first
    search, modules visited in sorted order so the answer is reproducible)."""
    state: dict[str, str] = {}  # "open" while on the search path, "done" after

    def visit(path: list[str]) -> list[str]:  # path: the modules being searched, in order
        state[path[-1]] = "open"
        for nxt in sorted(graph.get(path[-1], ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(path + [nxt])):
                return cycle
        state[path[-1]] = "done"
        return []

    for start in sorted(graph):
        if start not in state and (cycle := visit([start])):
            return cycle
    return []


def reachable(graph: dict[str, set[str]], start: str) -> dict[str, str]:
    """Every module ``start`` imports directly or through others -> the module importing it."""
    via, todo = {}, [start]
    while todo:
        node = todo.pop()
        for nxt in graph[node] - via.keys() - {start}:
            via[nxt] = node
            todo.append(nxt)
    return via


def step_modules() -> set[str]:
    """The steps: modules run as ``python -m ptycho_torch.<step>`` (they define ``main`` and
    run it under ``if __name__ == "__main__"``)."""
    return {p.stem for p in PACKAGE.glob("*.py")
            if 'if __name__ == "__main__":' in p.read_text() and "def main(" in p.read_text()}


def step_imports(graph: dict[str, set[str]], steps: set[str]) -> list[str]:
    """Every ``step -> step`` edge of ``graph``, as text."""
    return sorted(f"{a} -> {b}" for a in steps for b in graph.get(a, set()) & steps)


@pytest.mark.parametrize("module", NETWORK_FREE)
@pytest.mark.slow
def test_scoring_stitching_physics_and_config_do_not_import_the_network(module):
    via = reachable(import_graph(), module)
    for network in NETWORK:
        assert network not in via, (f"ptycho_torch/{module}.py depends on ptycho_torch.{network} "
                                    f"(imported by ptycho_torch/{via.get(network)}.py)")


def test_no_step_imports_another_step():
    steps = step_modules()
    assert {"simulate", "validate", "train", "infer", "iterative", "compare", "report",
            "studies", "audit"} <= steps
    assert step_imports(import_graph(), steps) == [], (
        "a step imports another step: move what they share into a library module")


def test_the_step_rule_sees_a_step_importing_a_step():
    graph = {"infer": {"train", "physics"}, "train": {"physics"}, "physics": set()}
    assert step_imports(graph, {"infer", "train"}) == ["infer -> train"]
    assert step_imports(graph, {"infer"}) == []


@pytest.mark.slow
def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle_and_the_graph_sees_lazy_imports():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []
    graph = import_graph()
    assert "data" in graph["config_factory"]  # a function-level import (check_data_file)
    assert "likelihood" in graph["stitch"] and "likelihood" in graph["model"]
